# frozen_string_literal: true

# Load generator for tests/db/rails_rotation.rs: a Rails-like ActiveRecord process (Debian 12's activerecord
# 6.1, or Debian 13's 7.2 inside its chroot, with mysql2 or pg) that keeps opening new connections while
# the test rotates the database password.
#
#   LOAD_CONFIG='{"adapter":"mysql2","host":"127.0.0.1","port":3306,"database":"app",
#                 "mode":"hook","secrets_sidecar":{"file":"/secrets/db.json","url":"...","token_file":"..."},
#                 "threads":8,"pool":5,"disconnect_every":0.25,"reconnect_every":25,"stop_file":"/tmp/stop"}' \
#   ruby tests/db/load.rb
#
# mode "hook": requires secrets_sidecar/active_record and configures the `secrets_sidecar:` block, as a
# Rails app would in database.yml. mode "read_once": the negative control — the credentials file is read
# once at boot into username/password (what ERB in database.yml does) and the hook is not loaded.
# mode "budget": no load; one connection attempt through the pool, timed, for credentials that never
# work (the test made sure of that), then the summary.
# "without": names parts of the hook to leave out, for negative controls: "reconnect_guard" (PostgreSQL
# reconnects reset the first login) and "reconnect_budget" (Rails 7.1+'s reconnect! retry runs the hook's
# loop again).
#
# Each thread runs `SELECT 1` through the pool in a loop; every `reconnect_every` queries it calls
# `reconnect!` on its connection (the adapter's reconnect path), and a separate thread calls
# `connection_pool.disconnect!` every `disconnect_every` seconds, so pool connections are created all the
# time. Counts queries, connections (new_client as ActiveRecord sees it, and driver logins underneath),
# and failures. A driver login the hook did not make (libpq's `reset`, which re-sends the first login's
# password, or any login outside the hook's connect) is a "stale login". On 7.1+ the query is sent with
# allow_retry, so a connection the test kills server-side is reconnected by Rails itself. Prints {"event":"ready"} once queries flow, and a JSON summary on SIGTERM or when the stop
# file appears. No password is printed: error messages are the drivers' ("Access denied for user ..."),
# which never contain one.

require "json"
require "logger"

cfg = JSON.parse(ENV.fetch("LOAD_CONFIG"))
lib = cfg["lib"] || File.expand_path("../../contrib/ruby/lib", __dir__)
$LOAD_PATH.unshift(lib)
$stdout.sync = true
$stderr.sync = true

require "active_record"

mode = cfg.fetch("mode")
adapter = cfg.fetch("adapter")
db_config = {
  adapter: adapter,
  host: cfg.fetch("host"),
  port: cfg.fetch("port"),
  database: cfg.fetch("database"),
  pool: cfg.fetch("pool", 5),
  checkout_timeout: 10,
  reaping_frequency: nil,
}
# Anything else the app's database.yml would say (TLS options, …).
db_config.merge!(cfg.fetch("db_extra", {}).transform_keys(&:to_sym))
without = cfg.fetch("without", [])
case mode
when "hook", "budget"
  require "secrets_sidecar/active_record"
  db_config[:secrets_sidecar] = cfg.fetch("secrets_sidecar")
  without.each do |part|
    unless %w[reconnect_guard reconnect_budget].include?(part)
      abort "load.rb: unknown part #{part.inspect} in without"
    end
    # Before any adapter loads: the install methods run from the adapters' load hooks.
    SecretsSidecar::ActiveRecord.define_singleton_method("install_#{part}") { |_adapter_class| nil }
  end
when "read_once"
  secret = JSON.parse(File.read(cfg.fetch("secrets_sidecar").fetch("file")))
  db_config[:username] = secret.fetch("username")
  db_config[:password] = secret.fetch("password")
else
  abort "load.rb: unknown mode #{mode.inspect}"
end

ActiveRecord::Base.logger = Logger.new($stderr, level: Logger::WARN)

# --- counters --------------------------------------------------------------------------------------
STATS_LOCK = Mutex.new
STATS = Hash.new(0)
ERRORS = []
FIRST_FAILURE = [nil]

def count(key, n = 1)
  STATS_LOCK.synchronize { STATS[key] += n }
end

def failure(kind, error)
  STATS_LOCK.synchronize do
    STATS[kind] += 1
    FIRST_FAILURE[0] ||= Time.now.to_f
    if ERRORS.size < 10
      ERRORS << { kind: kind, class: error.class.name, message: error.message.to_s[0, 300],
                  cause: error.cause && "#{error.cause.class.name}: #{error.cause.message.to_s[0, 200]}" }
    end
  end
end

# Connections as ActiveRecord sees them: one new_client call per pool connection or reconnect, after the
# hook's own retries (so a connection the hook recovered counts as one success).
counter = Module.new do
  define_method(:new_client) do |*args|
    client = super(*args)
    count("connections_opened")
    client
  rescue StandardError => e
    failure("connection_failures", e)
    raise
  end
end

# Which logins the hook makes: everything inside SecretsSidecar::ActiveRecord.connect.
if defined?(SecretsSidecar::ActiveRecord)
  SecretsSidecar::ActiveRecord.singleton_class.prepend(Module.new do
    def connect(*args, **kw, &blk)
      outer = Thread.current[:load_in_hook]
      Thread.current[:load_in_hook] = true
      super
    ensure
      Thread.current[:load_in_hook] = outer
    end
  end)
end

# One login at the driver level, including the hook's retries (shows how often a window was hit) and
# libpq resets. In hook mode, a login outside the hook is stale: the hook did not pick its password.
HOOKED = mode != "read_once"
def driver_login
  count("driver_logins")
  count("stale_logins") if HOOKED && !Thread.current[:load_in_hook]
  yield
rescue StandardError
  count("driver_login_failures")
  raise
end

ActiveRecord.const_get(:Base) # on_load hooks (6.1 requires the adapters from there in hook mode)
case adapter
when "mysql2"
  require "active_record/connection_adapters/mysql2_adapter"
  ActiveRecord::ConnectionAdapters::Mysql2Adapter.singleton_class.prepend(counter)
  Mysql2::Client.prepend(Module.new do
    define_method(:initialize) do |*args|
      driver_login { super(*args) }
    end
  end)
when "postgresql"
  require "active_record/connection_adapters/postgresql_adapter"
  ActiveRecord::ConnectionAdapters::PostgreSQLAdapter.singleton_class.prepend(counter)
  PG::Connection.singleton_class.prepend(Module.new do
    define_method(:new) do |*args, **kw, &blk|
      driver_login { super(*args, **kw, &blk) }
    end
  end)
  # libpq's reset: a new login with the options (password included) of the connection's first one. On a
  # closed connection it raises ConnectionBad at once, without contacting the server: no login (the
  # hook's guard closes the connection so that 6.1/7.0's reconnect! falls back to new_client that way).
  PG::Connection.prepend(Module.new do
    define_method(:reset) do |*args|
      finished? ? super(*args) : driver_login { super(*args) }
    end
  end)
end
ar71 = ActiveRecord.gem_version >= Gem::Version.new("7.1")

if mode != "read_once" && !SecretsSidecar::ActiveRecord.installed.include?(adapter == "mysql2" ? :mysql2 : :postgresql)
  abort "load.rb: the secrets_sidecar hook is not installed on #{adapter}"
end

ActiveRecord::Base.establish_connection(db_config)
pool = ActiveRecord::Base.connection_pool

def versions(adapter)
  { activerecord: ActiveRecord.version.to_s,
    driver: adapter == "mysql2" ? "mysql2 #{Mysql2::VERSION}" : "pg #{PG::VERSION}",
    ruby: RUBY_VERSION }
end

if mode == "budget"
  # What the app sees when the credentials never work: one query on a new pool connection.
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  error = nil
  begin
    pool.with_connection { |c| c.select_value("SELECT 1") }
  rescue StandardError => e
    error = e
  end
  seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  puts JSON.generate(event: "ready", at: Time.now.to_f)
  puts JSON.generate({ event: "summary", mode: mode, adapter: adapter, without: without }.merge(versions(adapter)).merge(
    seconds: seconds.round(3),
    error_class: error&.class&.name,
    error_message: error&.message.to_s[0, 300],
    driver_logins: STATS["driver_logins"],
    driver_login_failures: STATS["driver_login_failures"],
    stale_logins: STATS["stale_logins"],
  ))
  exit 0
end

stop = false
stop_file = cfg["stop_file"]
Signal.trap("TERM") { stop = true }
Signal.trap("INT") { stop = true }

threads = Array.new(cfg.fetch("threads", 8)) do |t|
  Thread.new do
    i = 0
    reconnect_every = cfg.fetch("reconnect_every", 25)
    # Or by time, for logins that are slow on purpose (the IAM tests' PAM verifier).
    reconnect_seconds = cfg["reconnect_every_seconds"]
    last_reconnect = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    until stop
      i += 1
      begin
        pool.with_connection do |conn|
          now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          if (reconnect_every.positive? && (i + t) % reconnect_every == 0) ||
             (reconnect_seconds && now - last_reconnect >= reconnect_seconds)
            last_reconnect = now
            conn.reconnect!
            count("reconnects")
          end
          # 7.1+: a read Rails may retry after reconnecting a connection killed under it.
          v = if ar71
                conn.select_all("SELECT 1", "SQL", allow_retry: true).rows.first.first
              else
                conn.select_value("SELECT 1")
              end
          raise "SELECT 1 returned #{v.inspect}" unless v.to_i == 1
        end
        count("queries")
      rescue StandardError => e
        failure("query_failures", e)
        sleep 0.02
      end
    end
  end
end

disconnector = Thread.new do
  every = cfg.fetch("disconnect_every", 0.25)
  until stop
    sleep every
    begin
      if ar71
        # 7.1+'s disconnect! waits until it holds every connection at once, blocking all checkouts
        # meanwhile; with 8 threads contending for 5 connections that took up to checkout_timeout (10 s)
        # and starved the load. flush(0) closes every idle connection without waiting.
        pool.flush(0)
      else
        pool.disconnect!
      end
      count("pool_disconnects")
    rescue StandardError => e
      # Not a database failure: the pool could not get every connection back in time.
      count("pool_disconnect_errors")
      warn "load.rb: disconnect! failed: #{e.class}"
    end
  end
end

started = Time.now
ready = false
max_runtime = cfg.fetch("max_runtime", 600)
until stop
  sleep 0.05
  if !ready && STATS_LOCK.synchronize { STATS["queries"] } >= 50
    ready = true
    puts JSON.generate(event: "ready", at: Time.now.to_f)
  end
  stop = true if stop_file && File.exist?(stop_file)
  # Never outlive the test that started us.
  stop = true if Process.ppid == 1 || Time.now - started > max_runtime
end

threads.each(&:join)
disconnector.join
summary = STATS_LOCK.synchronize do
  {
    event: "summary",
    mode: mode,
    adapter: adapter,
    without: without,
  }.merge(versions(adapter)).merge(
    seconds: (Time.now - started).round(2),
    queries: STATS["queries"],
    query_failures: STATS["query_failures"],
    connections_opened: STATS["connections_opened"],
    connection_failures: STATS["connection_failures"],
    driver_logins: STATS["driver_logins"],
    driver_login_failures: STATS["driver_login_failures"],
    stale_logins: STATS["stale_logins"],
    reconnects: STATS["reconnects"],
    pool_disconnects: STATS["pool_disconnects"],
    pool_disconnect_errors: STATS["pool_disconnect_errors"],
    first_failure_at: FIRST_FAILURE[0],
    errors: ERRORS,
  )
end
puts JSON.generate(summary)
