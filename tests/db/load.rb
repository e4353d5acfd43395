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
# mode "steps": no load; one pool connection, driven step by step by the test over stdin (one JSON command a
# line, one JSON answer a line; see STEPS below), for scenarios where the test acts between the app's steps
# (swaps a server certificate, changes a password, kills a session).
# "without": names parts of the hook to leave out, for negative controls (WITHOUT below): each shows what
# that part prevents.
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
# The hook's files, by path (they load each other by relative path): nothing on the load path.
LIB = cfg["lib"] || File.expand_path("../../contrib/ruby/lib", __dir__)
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
  checkout_timeout: cfg.fetch("checkout_timeout", 10),
  reaping_frequency: nil,
}
# Anything else the app's database.yml would say (TLS options, …).
db_config.merge!(cfg.fetch("db_extra", {}).transform_keys(&:to_sym))
without = cfg.fetch("without", [])
# Parts of the hook a negative control leaves out, each replaced by what happens without it.
WITHOUT = {
  # PostgreSQL reconnects reset the first login (libpq's reset, with the first password).
  "reconnect_guard" => -> { SecretsSidecar::ActiveRecord.define_singleton_method(:guard_reset) { |raw| raw } },
  # 6.1/7.0: the statement pool keeps the connection it was built with across a reconnect.
  "statement_pool" => -> { SecretsSidecar::ActiveRecord.define_singleton_method(:repoint_statement_pool) { |_a| nil } },
  # Rails 7.1+'s reconnect! retry runs the hook's loop again (before any adapter loads: the install
  # methods run from the adapters' load hooks).
  "reconnect_budget" => lambda {
    SecretsSidecar::ActiveRecord.define_singleton_method(:install_reconnect_budget) { |_adapter_class| nil }
  },
  # Calls to the sidecar get their default timeouts instead of the time left before the deadline.
  "deadline" => -> { SecretsSidecar::ActiveRecord.define_singleton_method(:call_timeout) { |_budget| nil } },
  # mysql2 keeps `reconnect: true`: libmariadb logs in again by itself with the first password.
  "reconnect_option" => lambda {
    SecretsSidecar::ActiveRecord.define_singleton_method(:mysql2_without_auto_reconnect) { |out, _settings| out }
  },
  # mysql2 gets what the hook gave it before the name check: ssl_mode verify_identity and the CA, nothing
  # else (mysql2 0.5.3 on Connector/C then checks the chain only).
  "name_check" => lambda {
    SecretsSidecar::ActiveRecord::IamTls.define_singleton_method(:mysql2) do |_out, ca_file, **|
      { ssl_mode: "verify_identity", sslca: ca_file }
    end
  },
  # No refusal for 127.0.0.1 with MariaDB Connector/C 3.4, which checks no name for it.
  "loopback_rule" => lambda {
    SecretsSidecar::ActiveRecord::IamTls.send(:remove_const, :LOOPBACK_LITERALS)
    SecretsSidecar::ActiveRecord::IamTls.const_set(:LOOPBACK_LITERALS, [].freeze)
  },
}.freeze

def leave_out(part)
  WITHOUT.fetch(part) { abort "load.rb: unknown part #{part.inspect} in without (known: #{WITHOUT.keys.join(', ')})" }.call
end

case mode
when "hook", "budget", "steps"
  require File.join(LIB, "secrets_sidecar/active_record")
  db_config[:secrets_sidecar] = cfg.fetch("secrets_sidecar")
  without.each { |part| leave_out(part) }
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

if mode == "steps"
  # STEPS: one JSON command a line on stdin, one JSON answer a line on stdout ({"ok": true, …} or
  # {"ok": false, "error_class", "message", "cause"}), each with the login counts so far.
  #   {"op":"query"}                       SELECT 1 on the pool's connection (7.1+: a read Rails may retry)
  #   {"op":"connect","host":H?}           a new connection (the pool emptied first), to H if given; SELECT 1
  #   {"op":"reconnect"}                   reconnect! on the pool's connection
  #   {"op":"verify"}                      verify! on it (a ping; a reconnect! if that fails)
  #   {"op":"prepare","n":N,"from":F}      N distinct prepared statements (PostgreSQL)
  #   {"op":"count_prepared"}              the session's prepared statements, as the server lists them
  #   {"op":"without","part":P}            leave part P of the hook out from now on (WITHOUT)
  select_one = lambda do |conn|
    v = ar71 ? conn.select_all("SELECT 1", "SQL", allow_retry: true).rows.first.first : conn.select_value("SELECT 1")
    raise "SELECT 1 returned #{v.inspect}" unless v.to_i == 1
  end
  int = ActiveRecord::Type::Integer.new
  puts JSON.generate(event: "ready", at: Time.now.to_f)
  $stdin.each_line do |line|
    cmd = JSON.parse(line)
    result = {}
    begin
      case cmd.fetch("op")
      when "query"
        pool.with_connection(&select_one)
      when "connect"
        ActiveRecord::Base.connection_pool.disconnect!
        ActiveRecord::Base.establish_connection(db_config.merge(host: cmd["host"])) if cmd["host"]
        pool = ActiveRecord::Base.connection_pool
        pool.with_connection(&select_one)
      when "reconnect"
        pool.with_connection(&:reconnect!)
      when "verify"
        pool.with_connection(&:verify!)
      when "prepare"
        pool.with_connection do |conn|
          cmd.fetch("n").times do |i|
            bind = ActiveRecord::Relation::QueryAttribute.new("n", 1, int)
            conn.exec_query("SELECT $1::int + #{cmd.fetch('from') + i} AS x", "SQL", [bind], prepare: true)
          end
        end
      when "count_prepared"
        result[:count] = pool.with_connection { |c| c.select_value("SELECT count(*) FROM pg_prepared_statements").to_i }
      when "without"
        leave_out(cmd.fetch("part"))
      else
        abort "load.rb: unknown step #{cmd.inspect}"
      end
      result[:ok] = true
    rescue StandardError => e
      result.merge!(ok: false, error_class: e.class.name, message: e.message.to_s[0, 300],
                    cause: e.cause && "#{e.cause.class.name}: #{e.cause.message.to_s[0, 300]}")
    end
    counts = STATS_LOCK.synchronize { %w[driver_logins driver_login_failures stale_logins].to_h { |k| [k, STATS[k]] } }
    puts JSON.generate(result.merge(counts))
  end
  exit 0
end

if mode == "budget"
  # What the app sees when the credentials never work: one query on a new pool connection. With
  # "waiters": N (and a pool of 1), N more threads ask the pool for a connection 0.2 s later, while the
  # first one's connect is failing: what a request queued behind it sees, and when.
  attempt = lambda do
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    begin
      pool.with_connection { |c| c.select_value("SELECT 1") }
      [nil, Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0]
    rescue StandardError => e
      [e, Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0]
    end
  end
  first = Thread.new(&attempt)
  waiters = Array.new(cfg.fetch("waiters", 0)) { sleep 0.2 if cfg["waiters"]; Thread.new(&attempt) }
  error, seconds = first.value
  waited = waiters.map(&:value).map { |e, t| { error_class: e&.class&.name, seconds: t.round(3) } }
  puts JSON.generate(event: "ready", at: Time.now.to_f)
  puts JSON.generate({ event: "summary", mode: mode, adapter: adapter, without: without }.merge(versions(adapter)).merge(
    seconds: seconds.round(3),
    error_class: error&.class&.name,
    error_message: error&.message.to_s[0, 300],
    waiters: waited,
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
