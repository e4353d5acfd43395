# frozen_string_literal: true

# secrets_sidecar/active_record: the ActiveRecord hook. Requiring this file installs it (in a Rails app the
# gem's Railtie requires it when ActiveRecord loads); nothing else to call.
#
# Rails reads database.yml once at boot, so a rotated password would only be seen after a redeploy. Every
# new connection and every reconnect goes through the adapter's class method `new_client` (Rails 6.1–8.x,
# mysql2, postgresql, trilogy), so the hook wraps that: it reads the credentials file the sidecar publishes
# (one stat when unchanged), puts username/password into a copy of the config, and on an authentication
# failure asks the sidecar to refresh, then tries the AWSPENDING value while a rotation is under way.
#
# Configuration, in the connection config (database.yml or establish_connection):
#
#   secrets_sidecar:
#     file: /secrets/db.json                      # required
#     url: http://127.0.0.1:2773/v1/secrets/db    # optional: refresh + AWSPENDING fallback
#     token_file: /secrets/.token                 # optional, with url
#     ca_file: /rds-ca/global-bundle.pem          # for RDS IAM entries: the CA bundle to verify the server
#
# The `secrets_sidecar` key never reaches the driver. An RDS IAM token (a sidecar `rds-iam://` entry) is sent
# only where the driver will check the server's certificate chain and name: see active_record/iam_tls.rb.
#
# Where the hook goes, by version (see the adapter sources):
# * mysql2/trilogy: `new_client(config)` receives the adapter's config, key included. Load hook
#   :active_record_mysql2adapter / :active_record_trilogyadapter from 7.1; before that we require the adapter.
# * postgresql: `new_client(conn_params)` receives libpq parameters, already sliced to libpq's keys, so the
#   `secrets_sidecar` key is gone. Every call comes from one of two places that still hold the whole config:
#   `ActiveRecord::Base.postgresql_connection(config)` (6.1/7.0, a new connection) and the adapter's private
#   `connect` (every version: 7.1+ connects lazily, and reconnects end there). Both are wrapped to hand the
#   settings to new_client for the length of the call, in a thread-local.
#
# What ActiveRecord does on its own, changed for connections that use the hook:
# * PostgreSQL reconnects (one guard, every version): the adapter's reconnect first calls libpq's
#   `PG::Connection#reset`, which logs in again with the first login's options, password included, and
#   reaches new_client only when that fails. After a rotation every reconnect would send the rotated-out
#   password first. The connections the hook opens get a `reset` that closes the connection and raises
#   PG::ConnectionBad, which is exactly the failure both versions answer with `connect` → new_client → the
#   file's credentials. A reset is a new login too: nothing is lost.
# * PostgreSQL 6.1/7.0's statement pool keeps the PG::Connection object it was built with, to DEALLOCATE
#   evicted prepared statements on it; a reconnect through `connect` makes a new object, so every eviction
#   after it would go to the closed one and the server would keep every statement ever prepared. The pool is
#   rebuilt on the new connection (the old session's statements died with it). 7.1+ pools hold the adapter.
# * mysql2 `reconnect: true`: libmariadb then logs in again by itself when it finds the connection gone,
#   with the first login's password and outside any Ruby code; after a rotation that is a login with a
#   rotated-out password. The hook passes `reconnect: false` and warns once; ActiveRecord's own reconnect
#   (verify on checkout, 7.1+'s retry of a failed read) goes through the hook instead.
# * the retry budget: ActiveRecord 7.1+ `AbstractAdapter#reconnect!` retries any ConnectionNotEstablished
#   `connection_retries` times (default 1), and every login error the hook re-raises is one, so the hook's
#   whole loop would run again. `reconnect!` is wrapped to open a Budget shared by the hook's calls within
#   it: once the hook has given up, Rails' retry gets the same error at once, without a login.
#
# The failure budget: at most MAX_ATTEMPTS logins per connection, and one deadline, RETRY_BUDGET seconds
# after the first refused login, for everything after it: every call to the sidecar gets the time left as
# its timeout (Client#refresh(timeout:)), every backoff sleeps at most that long, and nothing new starts
# once it has passed. So the app gets the original error within RETRY_BUDGET of the first refusal (plus a
# login already under way) however slowly the sidecar answers.
#
# Instrumentation (ActiveSupport::Notifications, names ending in ".secrets_sidecar"; payloads hold paths,
# a URL, a user name, counts and class names, never a password or token):
# * refresh.secrets_sidecar — the hook asked the sidecar to refresh after a refused login. Payload: file, url,
#   adapter, outcome ("changed", "unchanged", "rotation_in_progress" or "failed"), error_class when failed.
# * pending_credentials.secrets_sidecar — a connection was opened with the AWSPENDING credentials. Payload:
#   file, adapter, username, remembered (true when reused from an earlier connection of this rotation).
# * gave_up.secrets_sidecar — no credentials worked; the original error goes to the app. Payload: file,
#   adapter, attempts, seconds (since the first refused login), error_class.

require "active_record"
require_relative "../secrets_sidecar"

module SecretsSidecar
  module ActiveRecord
    CONFIG_KEY = "secrets_sidecar"
    # Attempts per new connection, including the first.
    MAX_ATTEMPTS = 3
    # Seconds from the first refused login to the deadline of everything after it.
    RETRY_BUDGET = 2.5
    BACKOFF = [0.2, 0.5, 1.0].freeze
    # A call to the sidecar is not started with less time than this left: it could not answer in time.
    MIN_CALL_TIME = 0.05
    MYSQL_ACCESS_DENIED = 1045
    PG_INVALID_PASSWORD = "28P01"
    PG_AUTH_MESSAGE = /password authentication failed|authentication failed for user/i.freeze
    EVENT_SUFFIX = ".secrets_sidecar"

    BUDGET_KEY = :__secrets_sidecar_budget
    PG_SETTINGS_KEY = :__secrets_sidecar_pg_settings

    # Raised instead of a bare errno when the credentials cannot be read. A ConnectionNotEstablished, so
    # ActiveRecord and apps treat it as what it is.
    class CredentialsUnavailable < ::ActiveRecord::ConnectionNotEstablished; end

    # An RDS IAM token would go out without TLS, or to a server the driver would not fully verify. Raised
    # before any login; the message names the driver, its version and the fix.
    class InsecureTransport < ::ActiveRecord::ConnectionNotEstablished; end

    # The logins one new connection may cost (MAX_ATTEMPTS) and its deadline (RETRY_BUDGET after the first
    # refused login). One Budget lives for one `connect`, or for one `reconnect!` on ActiveRecord 7.1+,
    # whose own retry calls `connect` again (see ReconnectBudget).
    class Budget
      attr_reader :attempts, :first_error, :deadline, :first_refusal_at

      def initialize
        @attempts = 0
        @refused = []
        @first_error = nil
        @first_refusal_at = nil
        @deadline = nil
        @gave_up = false
      end

      def attempted
        @attempts += 1
      end

      # An authentication failure with these credentials: never try them again within this budget.
      def refused(creds, error, now)
        @refused << creds
        @first_error ||= error
        @first_refusal_at ||= now
        @deadline ||= now + RETRY_BUDGET
      end

      def refused?(creds)
        @refused.any? { |r| r.same_login?(creds) }
      end

      # Seconds left until the deadline (nil before the first refusal; never below zero).
      def time_left(now)
        @deadline && [@deadline - now, 0.0].max
      end

      def spent?
        @attempts >= MAX_ATTEMPTS
      end

      def give_up!
        @gave_up = true
      end

      def gave_up?
        @gave_up
      end

      def inspect
        "#<#{self.class.name} attempts=#{@attempts} refused=#{@refused.size} gave_up=#{@gave_up}>"
      end
      alias to_s inspect
    end

    # Parsed `secrets_sidecar:` block. Holds paths and a URL, no secret.
    class Settings
      KEYS = %w[file url token_file ca_file].freeze
      attr_reader :file, :url, :token_file, :ca_file

      def self.from(value)
        return nil if value.nil?
        unless value.respond_to?(:to_hash)
          raise ArgumentError, "secrets_sidecar: the `secrets_sidecar` connection option must be a hash " \
                               "with `file` (and optionally `url`, `token_file`, `ca_file`)"
        end
        h = value.to_hash.each_with_object({}) { |(k, v), acc| acc[k.to_s] = v }
        unknown = h.keys - KEYS
        unless unknown.empty?
          raise ArgumentError, "secrets_sidecar: unknown key(s) #{unknown.join(', ')} in `secrets_sidecar` " \
                               "(known: #{KEYS.join(', ')})"
        end
        file = h["file"].to_s
        raise ArgumentError, "secrets_sidecar: `secrets_sidecar.file` is required" if file.empty?

        url, token_file, ca_file = h.values_at("url", "token_file", "ca_file").map { |v| v.to_s.empty? ? nil : v.to_s }
        new(file, url, token_file, ca_file)
      end

      def initialize(file, url, token_file, ca_file = nil)
        @file = file.dup.freeze
        @url = url&.dup&.freeze
        @token_file = token_file&.dup&.freeze
        @ca_file = ca_file&.dup&.freeze
        freeze
      end

      def key
        [file, url, token_file, ca_file]
      end

      def ==(other)
        other.is_a?(Settings) && other.key == key
      end
      alias eql? ==

      def hash
        key.hash
      end
    end

    # Per-process state for one `secrets_sidecar` block: the file cache, the endpoint client, and the
    # memory that the AWSPENDING credentials worked (valid until the file changes), so that during a
    # single-user rotation window only the first connection pays the extra round trips.
    class Source
      attr_reader :settings, :file, :client

      def initialize(settings)
        @settings = settings
        @file = CredentialsFile.new(settings.file)
        @client = settings.url ? Client.new(settings.url, token_file: settings.token_file) : nil
        @mutex = Mutex.new
        @pending_memo = nil # [file identity, Credentials]
      end

      # Credentials to try first, in order: remembered AWSPENDING credentials (while the file is unchanged),
      # then the file's.
      def initial_candidates
        current = @file.read
        memo = @mutex.synchronize { @pending_memo }
        if memo && memo[0] == @file.identity
          [memo[1], current]
        else
          forget_pending if memo
          [current]
        end
      end

      # Returns true when these were AWSPENDING credentials remembered from an earlier connection.
      def succeeded(creds)
        return false unless creds.source == :pending

        identity = @file.identity
        @mutex.synchronize do
          remembered = !@pending_memo.nil? && @pending_memo[1].same_login?(creds)
          @pending_memo = [identity, creds]
          remembered
        end
      end

      def failed(creds)
        forget_pending if creds.source == :pending
      end

      def forget_pending
        @mutex.synchronize { @pending_memo = nil }
      end

      def inspect
        "#<#{self.class.name} file=#{settings.file.inspect} url=#{settings.url.inspect}>"
      end
      alias to_s inspect
    end

    class << self
      attr_writer :logger

      def logger
        @logger || (::ActiveRecord::Base.logger if defined?(::ActiveRecord::Base))
      end

      # Settings from a connection config (string or symbol key), or nil when the key is absent.
      def settings_from(config)
        return nil unless config.respond_to?(:key?)

        value = config[:secrets_sidecar] || config[CONFIG_KEY]
        Settings.from(value)
      end

      # A copy of the config without the `secrets_sidecar` key (the original is frozen on 6.1, and must
      # not be mutated in any case).
      def strip(config)
        config.reject { |k, _| k.to_s == CONFIG_KEY }
      end

      def source_for(settings)
        @sources_mutex.synchronize { @sources[settings.key] ||= Source.new(settings) }
      end

      # For tests: forget every cached file and memo.
      def reset!
        @sources_mutex.synchronize { @sources.clear }
        @warned_once_mutex.synchronize { @warned_once.clear }
      end

      # The connection config with credentials applied. kind :mysql2, :trilogy (username/database) or
      # :postgresql (libpq names: user/dbname). The secret's host/port/database fill only what the config
      # leaves out. An RDS IAM token also gets the driver's TLS settings (IamTls), or InsecureTransport.
      def apply(config, creds, kind, settings = nil)
        user_key, db_key = kind == :postgresql ? %i[user dbname] : %i[username database]
        out = strip(config).transform_keys(&:to_sym)
        out[user_key] = creds.username if creds.username
        out[:password] = creds.password
        out[:host] = creds.host if blank?(out[:host]) && creds.host && blank?(out[:socket])
        out[:port] = creds.port if blank?(out[:port]) && creds.port
        out[db_key] = creds.dbname if blank?(out[db_key]) && creds.dbname
        if creds.iam_token?
          tls = IamTls.options(kind, out, settings&.ca_file)
          out.merge!(tls) { |_key, own, ours| blank?(own) ? ours : own }
        end
        out = mysql2_without_auto_reconnect(out, settings) if kind == :mysql2
        out
      end

      # libmariadb's `reconnect: true` logs in again by itself, with the first login's password, outside
      # any Ruby code (see the header): off for connections that use the hook, with a warning once.
      def mysql2_without_auto_reconnect(out, settings)
        return out unless out[:reconnect]

        warn_once(:mysql2_reconnect, "reconnect: true is ignored for connections that use the hook: libmariadb " \
                                     "would log in again by itself with the first login's password (after a " \
                                     "rotation, a rotated-out one); ActiveRecord reconnects through the hook " \
                                     "instead (#{settings&.file})")
        out.merge(reconnect: false)
      end

      # True when the error (or any error in its cause chain) is an authentication failure: MySQL/MariaDB
      # 1045 (mysql2 error_number, trilogy error_code) or PostgreSQL 28P01 / its message. Rails may wrap
      # the driver error in ConnectionNotEstablished, DatabaseConnectionError or even NoDatabaseError (when
      # the user name happens to contain the database name), so the cause chain is walked.
      def auth_failure?(error)
        seen = {}
        e = error
        while e && !seen[e.object_id]
          seen[e.object_id] = true
          return true if e.respond_to?(:error_number) && e.error_number == MYSQL_ACCESS_DENIED
          return true if e.respond_to?(:error_code) && e.error_code == MYSQL_ACCESS_DENIED
          return true if pg_auth_failure?(e)

          e = e.cause
        end
        false
      end

      # Opens a connection with credentials from the sidecar. Yields the config to pass to the original
      # new_client; returns what it returns.
      def connect(config, settings, kind)
        budget = Thread.current[BUDGET_KEY] || Budget.new
        if budget.gave_up?
          # ActiveRecord 7.1+ retrying the reconnect! in which the hook already gave up: the same answer,
          # without another login.
          raise budget.first_error
        end

        source = source_for(settings)
        candidates = begin
          source.initial_candidates
        rescue SecretsSidecar::Error => e
          raise CredentialsUnavailable, e.message
        end
        round = 0
        loop do
          creds = candidates.shift
          creds = candidates.shift while creds && budget.refused?(creds)
          if creds.nil?
            break if budget.first_error.nil? || budget.spent?

            creds = discover(source, budget, round, kind)
            round += 1
            break unless creds
          end
          budget.attempted
          begin
            client = yield apply(config, creds, kind, settings)
            succeeded(source, creds, kind, budget)
            return client
          rescue StandardError => e
            raise unless auth_failure?(e)

            source.failed(creds)
            budget.refused(creds, e, monotonic)
            warn("authentication failed for user #{creds.username.inspect} with the #{describe(creds)} " \
                 "(attempt #{budget.attempts}/#{MAX_ATTEMPTS}, #{settings.file})")
            break if budget.spent?
          end
        end
        raise CredentialsUnavailable, "secrets_sidecar: no credentials to try (#{settings.file})" unless budget.first_error

        give_up(settings, kind, budget)
      end

      # Runs the block with one Budget for every connect inside it (ReconnectBudget). Nested calls share
      # the outer one.
      def with_budget
        return yield if Thread.current[BUDGET_KEY]

        Thread.current[BUDGET_KEY] = Budget.new
        begin
          yield
        ensure
          Thread.current[BUDGET_KEY] = nil
        end
      end

      # The settings of the PostgreSQL connection being opened on this thread, for new_client (whose libpq
      # parameters no longer carry them). Set by with_pg_settings around the calls that lead to it.
      def pg_settings
        Thread.current[PG_SETTINGS_KEY]
      end

      def with_pg_settings(settings)
        previous = Thread.current[PG_SETTINGS_KEY]
        Thread.current[PG_SETTINGS_KEY] = settings
        begin
          yield
        ensure
          Thread.current[PG_SETTINGS_KEY] = previous
        end
      end

      # The PostgreSQL reconnect guard (see the header): `raw` (a PG::Connection the hook opened) gets a
      # `reset` that closes it and raises PG::ConnectionBad instead of logging in with its first password.
      def guard_reset(raw)
        raw.extend(FreshLoginOnReset)
      end

      # 6.1/7.0 only (see the header): after `connect` made a new PG::Connection, a statement pool built on it.
      def repoint_statement_pool(adapter)
        return if STATEMENT_POOL_HOLDS_ADAPTER

        adapter.instance_variable_set(:@statements, adapter.send(:build_statement_pool))
      end

      # The timeout of the next call to the sidecar: the time left before the budget's deadline.
      def call_timeout(budget)
        budget.time_left(monotonic)
      end

      # MariaDB Connector/C loads its clear-password plugin on the first login that needs it, and two
      # threads doing that at once fail one of them ("Plugin mysql_clear_password could not be loaded: it
      # is already loaded"; seen with Connector/C 3.4 under ActiveRecord 7.2). So a process's mysql2 logins
      # with an IAM token go one at a time until one has succeeded; after that the plugin is there.
      def cleartext_login(kind, conn_config)
        return yield if kind != :mysql2 || @cleartext_loaded
        return yield unless Credentials::IAM_TOKEN.match?(conn_config[:password].to_s)

        @cleartext_mutex.synchronize do
          client = yield
          @cleartext_loaded = true
          client
        end
      end

      # Closes a driver connection without raising (it may be closed or broken already).
      def close_quietly(raw)
        raw&.close
      rescue StandardError
        nil
      end

      private

      # Finds credentials not yet tried: ask the sidecar to refresh, re-read the file, and during a rotation
      # the AWSPENDING value. Sleeps with backoff between rounds. Every call and sleep ends by the budget's
      # deadline; nil: nothing new before it.
      def discover(source, budget, round, kind)
        fresh = ->(c) { c && !budget.refused?(c) }
        loop do
          answer = source.client && within_deadline(budget) { |t| refresh(source, kind, t) }
          begin
            current = source.file.read
            return current if fresh.call(current)
          rescue SecretsSidecar::Error => e
            warn(e.message)
          end
          if answer
            if answer["changed"]
              # The sidecar has a new AWSCURRENT; the file may lag behind its answer by a moment.
              current = within_deadline(budget) { |t| safe { source.client.current(timeout: t) } }
              return current if fresh.call(current)
            end
            if answer["rotation_in_progress"]
              pending = within_deadline(budget) { |t| safe { source.client.pending(timeout: t) } }
              return pending if fresh.call(pending)
            end
          end
          pause = BACKOFF[[round, BACKOFF.size - 1].min]
          round += 1
          left = budget.time_left(monotonic)
          return nil if left <= MIN_CALL_TIME

          sleep([pause, left].min)
          return nil if budget.time_left(monotonic) <= 0
        end
      end

      # Yields the timeout for one call to the sidecar, or returns nil without calling when too little
      # time is left for it.
      def within_deadline(budget)
        timeout = call_timeout(budget)
        return nil if timeout && timeout < MIN_CALL_TIME

        yield timeout
      end

      def refresh(source, kind, timeout)
        payload = { file: source.settings.file, url: source.settings.url, adapter: kind.to_s }
        instrument("refresh", payload) do
          answer = source.client.refresh(timeout: timeout)
          payload[:outcome] =
            if answer["changed"] then "changed"
            elsif answer["rotation_in_progress"] then "rotation_in_progress"
            else "unchanged"
            end
          answer
        rescue SecretsSidecar::Error => e
          payload[:outcome] = "failed"
          payload[:error_class] = e.class.name
          warn("refresh failed: #{e.message}")
          nil
        end
      end

      def succeeded(source, creds, kind, budget)
        remembered = source.succeeded(creds)
        if creds.source == :pending
          instrument("pending_credentials", file: source.settings.file, adapter: kind.to_s,
                                            username: creds.username, remembered: remembered)
        end
        return unless budget.first_error

        msg = "connected with the #{describe(creds)} on attempt #{budget.attempts} (#{source.settings.file})"
        msg += "; rotation in progress, remembering them until the file changes" if creds.source == :pending
        logger&.warn("[secrets_sidecar] #{msg}")
      end

      def give_up(settings, kind, budget)
        budget.give_up!
        seconds = (monotonic - budget.first_refusal_at).round(3)
        instrument("gave_up", file: settings.file, adapter: kind.to_s, attempts: budget.attempts,
                              seconds: seconds, error_class: budget.first_error.class.name)
        warn("giving up after #{budget.attempts} attempt(s) and #{seconds} s; raising the original error " \
             "(#{settings.file})")
        raise budget.first_error
      end

      def instrument(name, payload, &block)
        ActiveSupport::Notifications.instrument("#{name}#{EVENT_SUFFIX}", payload, &block)
      end

      def safe
        yield
      rescue SecretsSidecar::Error => e
        warn(e.message)
        nil
      end

      def describe(creds)
        case creds.source
        when :pending then "AWSPENDING credentials"
        when :endpoint then "sidecar's current credentials"
        else "credentials file's credentials"
        end
      end

      def warn(message)
        logger&.warn("[secrets_sidecar] #{message}")
      end

      def warn_once(key, message)
        first = @warned_once_mutex.synchronize { @warned_once[key] ? false : (@warned_once[key] = true) }
        warn(message) if first
      end

      def pg_auth_failure?(e)
        return false unless defined?(::PG::Error) && e.is_a?(::PG::Error)

        state = begin
          e.result&.error_field(::PG::PG_DIAG_SQLSTATE)
        rescue StandardError
          nil
        end
        state == PG_INVALID_PASSWORD || PG_AUTH_MESSAGE.match?(e.message.to_s)
      end

      def blank?(value)
        value.nil? || (value.respond_to?(:empty?) && value.empty?)
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end

    @sources = {}
    @sources_mutex = Mutex.new
    @cleartext_mutex = Mutex.new
    @cleartext_loaded = false
    @warned_once = {}
    @warned_once_mutex = Mutex.new

    # From 7.1 the PostgreSQL statement pool holds the adapter and reaches the raw connection through it.
    STATEMENT_POOL_HOLDS_ADAPTER = ::ActiveRecord.gem_version >= Gem::Version.new("7.1")

    # --- the hooks -----------------------------------------------------------------------------------

    # Prepended on Mysql2Adapter.singleton_class / TrilogyAdapter.singleton_class.
    module MysqlNewClient
      def new_client(config)
        settings = SecretsSidecar::ActiveRecord.settings_from(config)
        return super unless settings

        kind = SecretsSidecar::ActiveRecord.trilogy?(self) ? :trilogy : :mysql2
        SecretsSidecar::ActiveRecord.connect(config, settings, kind) do |conn_config|
          client = SecretsSidecar::ActiveRecord.cleartext_login(kind, conn_config) { super(conn_config) }
          # mysql2 keeps every option, password included, in client.query_options for the life of the
          # connection; it is only needed to connect.
          client.query_options.delete(:password) if client.respond_to?(:query_options)
          client
        end
      end
    end

    # Prepended on PostgreSQLAdapter.singleton_class.
    module PostgresNewClient
      def new_client(conn_params)
        settings = SecretsSidecar::ActiveRecord.pg_settings
        return super unless settings

        SecretsSidecar::ActiveRecord.connect(conn_params, settings, :postgresql) do |params|
          SecretsSidecar::ActiveRecord.guard_reset(super(params))
        end
      end
    end

    # Extends each PG::Connection the hook opens (see guard_reset).
    module FreshLoginOnReset
      def reset(*)
        SecretsSidecar::ActiveRecord.close_quietly(self)
        raise ::PG::ConnectionBad, "secrets_sidecar: no reset with this connection's first password; " \
                                   "reconnect through new_client"
      end
    end

    # Prepended on ActiveRecord::Base.singleton_class for 6.1/7.0, where postgresql_connection slices the
    # config to libpq keys and calls new_client before the adapter exists.
    module PostgresConnectionHandling
      def postgresql_connection(config)
        settings = SecretsSidecar::ActiveRecord.settings_from(config)
        return super unless settings

        SecretsSidecar::ActiveRecord.with_pg_settings(settings) { super }
      end
    end

    # Prepended on PostgreSQLAdapter: its private `connect` (7.1+'s lazy connect, every version's reconnect
    # fallback) calls new_client with @connection_parameters.
    module PostgresConnect
      private

      def connect(*args, **kwargs)
        settings = SecretsSidecar::ActiveRecord.settings_from(@config)
        return super unless settings

        result = SecretsSidecar::ActiveRecord.with_pg_settings(settings) { super }
        SecretsSidecar::ActiveRecord.repoint_statement_pool(self)
        result
      end
    end

    # Prepended on every hooked adapter class: one Budget for a whole `reconnect!`, whose 7.1+ retry loop
    # calls the hook again after it gave up. Harmless on 6.1/7.0, which do not retry.
    module ReconnectBudget
      def reconnect!(*args, **kwargs)
        SecretsSidecar::ActiveRecord.with_budget { super }
      end
    end

    class << self
      def install_mysql(adapter_class)
        return if adapter_class.singleton_class.include?(MysqlNewClient)

        adapter_class.singleton_class.prepend(MysqlNewClient)
        install_reconnect_budget(adapter_class)
      end

      def install_postgresql(adapter_class)
        return if adapter_class.singleton_class.include?(PostgresNewClient)

        adapter_class.singleton_class.prepend(PostgresNewClient)
        adapter_class.prepend(PostgresConnect)
        if !STATEMENT_POOL_HOLDS_ADAPTER && ::ActiveRecord::Base.respond_to?(:postgresql_connection)
          ::ActiveRecord::Base.singleton_class.prepend(PostgresConnectionHandling)
        end
        install_reconnect_budget(adapter_class)
      end

      # One retry budget per reconnect!, across ActiveRecord 7.1+'s own retries (see the header).
      def install_reconnect_budget(adapter_class)
        adapter_class.prepend(ReconnectBudget)
      end

      def trilogy?(adapter_class)
        defined?(::ActiveRecord::ConnectionAdapters::TrilogyAdapter) &&
          adapter_class <= ::ActiveRecord::ConnectionAdapters::TrilogyAdapter
      end

      # Which hooks were installed (for tests and `rails runner` checks).
      def installed
        out = []
        if defined?(::ActiveRecord::ConnectionAdapters::Mysql2Adapter) &&
           ::ActiveRecord::ConnectionAdapters::Mysql2Adapter.singleton_class.include?(MysqlNewClient)
          out << :mysql2
        end
        if defined?(::ActiveRecord::ConnectionAdapters::TrilogyAdapter) &&
           ::ActiveRecord::ConnectionAdapters::TrilogyAdapter.singleton_class.include?(MysqlNewClient)
          out << :trilogy
        end
        if defined?(::ActiveRecord::ConnectionAdapters::PostgreSQLAdapter) &&
           ::ActiveRecord::ConnectionAdapters::PostgreSQLAdapter.singleton_class.include?(PostgresNewClient)
          out << :postgresql
        end
        out
      end

      # Requires an adapter file for Rails versions without a load hook for it; skipped when the driver
      # gem is not installed (the app cannot use that adapter then anyway).
      def require_adapter(name)
        require "active_record/connection_adapters/#{name}_adapter"
        true
      rescue LoadError
        false
      end
    end

    ar_version = ::ActiveRecord.gem_version
    # Trilogy: built in from 7.1; the activerecord-trilogy-adapter gem (6.1/7.0) runs the same load hook.
    ActiveSupport.on_load(:active_record_trilogyadapter) { SecretsSidecar::ActiveRecord.install_mysql(self) }
    if ar_version >= Gem::Version.new("7.1")
      ActiveSupport.on_load(:active_record_mysql2adapter) { SecretsSidecar::ActiveRecord.install_mysql(self) }
    else
      ActiveSupport.on_load(:active_record) do
        if SecretsSidecar::ActiveRecord.require_adapter("mysql2")
          SecretsSidecar::ActiveRecord.install_mysql(::ActiveRecord::ConnectionAdapters::Mysql2Adapter)
        end
      end
    end
    if ar_version >= Gem::Version.new("7.0")
      ActiveSupport.on_load(:active_record_postgresqladapter) do
        SecretsSidecar::ActiveRecord.install_postgresql(self)
      end
    else
      ActiveSupport.on_load(:active_record) do
        if SecretsSidecar::ActiveRecord.require_adapter("postgresql")
          SecretsSidecar::ActiveRecord.install_postgresql(::ActiveRecord::ConnectionAdapters::PostgreSQLAdapter)
        end
      end
    end
  end
end

require_relative "active_record/iam_tls"
