# frozen_string_literal: true

# The Rack app of tests/db/rails_puma.rs: what a Rails app under Puma does with its two kinds of secret.
#
# * The boot-time secret: `SECRET_KEY_BASE` read once at boot from the sidecar's `format=env` file, as
#   `Dotenv.overload` in config/boot.rb would. Only a (phased) restart changes it.
# * The database password: ActiveRecord (mysql2) with the hook, `secrets_sidecar:` in the connection
#   config as in database.yml; mode "read_once" (the negative control) reads the password once at boot
#   instead, as ERB in database.yml would.
#
# Puma loads this file in each worker (no preload_app!). Every request checks a connection out of the pool,
# runs `SELECT 1` and answers "<fingerprint of SECRET_KEY_BASE> <pid>" (500 and the error class when the
# query fails). A thread closes the pool's idle connections 4 times a second, so new logins happen all the
# time. Counted per worker, the way tests/db/load.rb counts (a driver login outside the hook's connect is a
# "stale login"), and written after every request to STATS_DIR/<pid>.json, so the counts of workers that a
# phased restart stopped are kept. Configuration: APP_CONFIG, a JSON file. No password is written anywhere.

require "json"
require "digest"
require "logger"
require "dotenv"

cfg = JSON.parse(File.read(ENV.fetch("APP_CONFIG")))
require "active_record"

# overload, not load: a worker is forked from the master, whose ENV must not win over the file.
Dotenv.overload(cfg.fetch("env_file"))
FINGERPRINT = Digest::SHA256.hexdigest(ENV.fetch("SECRET_KEY_BASE"))[0, 12]

mode = cfg.fetch("mode")
db_config = {
  adapter: "mysql2",
  host: cfg.fetch("host"),
  port: cfg.fetch("port"),
  database: cfg.fetch("database"),
  pool: 4, # Puma's max threads per worker
  checkout_timeout: 5,
  reaping_frequency: nil,
}
case mode
when "hook"
  # By path, as tests/db/load.rb does: the gem itself is booted in tests/db/rails_gem.rs.
  require File.join(cfg.fetch("lib"), "secrets_sidecar/active_record")
  db_config[:secrets_sidecar] = cfg.fetch("secrets_sidecar")
when "read_once"
  secret = JSON.parse(File.read(cfg.fetch("secrets_sidecar").fetch("file")))
  db_config[:username] = secret.fetch("username")
  db_config[:password] = secret.fetch("password")
else
  abort "rails_puma.ru: unknown mode #{mode.inspect}"
end
ActiveRecord::Base.logger = Logger.new($stderr, level: Logger::WARN)

# Module methods: the driver and adapter patches below run with other selves.
module AppStats
  LOCK = Mutex.new
  COUNTS = Hash.new(0)
  ERRORS = []

  module_function

  def count(key)
    LOCK.synchronize { COUNTS[key] += 1 }
  end

  def failure(kind, error)
    LOCK.synchronize do
      COUNTS[kind] += 1
      ERRORS << "#{kind}: #{error.class}: #{error.message.to_s[0, 200]}" if ERRORS.size < 10
    end
  end

  def save(file, extra)
    LOCK.synchronize do
      File.write("#{file}.tmp", JSON.generate(COUNTS.merge(extra).merge(errors: ERRORS)))
      File.rename("#{file}.tmp", file)
    end
  end
end
STATS_FILE = File.join(cfg.fetch("stats_dir"), "#{Process.pid}.json")
STATS_EXTRA = { pid: Process.pid, fingerprint: FINGERPRINT, activerecord: ActiveRecord.version.to_s,
                ruby: RUBY_VERSION }.freeze

# Which logins the hook makes: everything inside SecretsSidecar::ActiveRecord.connect.
if defined?(SecretsSidecar::ActiveRecord)
  SecretsSidecar::ActiveRecord.singleton_class.prepend(Module.new do
    def connect(*args, **kw, &blk)
      outer = Thread.current[:app_in_hook]
      Thread.current[:app_in_hook] = true
      super
    ensure
      Thread.current[:app_in_hook] = outer
    end
  end)
end

ActiveRecord.const_get(:Base) # on_load hooks (6.1 requires the adapter from there in hook mode)
require "active_record/connection_adapters/mysql2_adapter"
ActiveRecord::ConnectionAdapters::Mysql2Adapter.singleton_class.prepend(Module.new do
  define_method(:new_client) do |*args|
    client = super(*args)
    AppStats.count("connections_opened")
    client
  rescue StandardError => e
    AppStats.failure("connection_failures", e)
    raise
  end
end)
HOOKED = mode == "hook"
Mysql2::Client.prepend(Module.new do
  define_method(:initialize) do |*args|
    AppStats.count("driver_logins")
    AppStats.count("stale_logins") if HOOKED && !Thread.current[:app_in_hook]
    super(*args)
  rescue StandardError
    AppStats.count("driver_login_failures")
    raise
  end
end)
if HOOKED && !SecretsSidecar::ActiveRecord.installed.include?(:mysql2)
  abort "rails_puma.ru: the secrets_sidecar hook is not installed on mysql2"
end

ActiveRecord::Base.establish_connection(db_config)
POOL = ActiveRecord::Base.connection_pool
AR71 = ActiveRecord.gem_version >= Gem::Version.new("7.1")
AppStats.save(STATS_FILE, STATS_EXTRA)

Thread.new do
  loop do
    sleep 0.25
    begin
      # As load.rb: 7.1+'s disconnect! blocks every checkout until it holds all connections.
      AR71 ? POOL.flush(0) : POOL.disconnect!
      AppStats.count("pool_disconnects")
    rescue StandardError => e
      warn "rails_puma.ru: disconnect failed: #{e.class}"
    end
  end
end

HEADERS = { "content-type" => "text/plain" }.freeze
run(lambda do |_env|
  begin
    v = POOL.with_connection do |conn|
      # 7.1+: a read Rails may retry after reconnecting a connection the test killed under it.
      AR71 ? conn.select_all("SELECT 1", "SQL", allow_retry: true).rows.first.first : conn.select_value("SELECT 1")
    end
    raise "SELECT 1 returned #{v.inspect}" unless v.to_i == 1

    AppStats.count("queries")
    [200, HEADERS.dup, ["#{FINGERPRINT} #{Process.pid}"]]
  rescue StandardError => e
    AppStats.failure("query_failures", e)
    [500, HEADERS.dup, [e.class.name]]
  ensure
    AppStats.save(STATS_FILE, STATS_EXTRA)
  end
end)
