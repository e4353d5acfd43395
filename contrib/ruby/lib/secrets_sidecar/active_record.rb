# frozen_string_literal: true

# secrets_sidecar/active_record: requiring this file installs the hook; nothing else to call.
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
# RDS IAM authentication: when the file holds an IAM auth token instead of a password (a sidecar
# `rds-iam://` entry), the hook sends it only over TLS to a verified server: mysql2 gets
# `ssl_mode: verify_identity`, `sslca` and, with libmysqlclient, `enable_cleartext_plugin` (the token
# travels as a cleartext password, as RDS requires; MariaDB Connector/C always allows it), trilogy `ssl_mode: verify_identity`, `ssl_ca` and `enable_cleartext_plugin`,
# pg `sslmode: verify-full` and `sslrootcert`. A CA the config already names wins over `ca_file`; a TLS
# setting in the config that is weaker than full verification is refused with InsecureTransport, before
# the token is sent anywhere.
#
# The `secrets_sidecar` key never reaches the driver.
#
# Where the hook goes, by version (see the adapter sources):
# * mysql2/trilogy: `new_client(config)` receives the adapter's config, key included. Load hook
#   :active_record_mysql2adapter / :active_record_trilogyadapter from 7.1; before that we require the adapter.
# * postgresql: `new_client(conn_params)` receives libpq parameters, already sliced to libpq's keys, so the
#   `secrets_sidecar` key is gone. 6.1/7.0 build them in `ActiveRecord::Base.postgresql_connection` and call
#   new_client right there; 7.1+ build them in the adapter's initialize and connect lazily. We carry the
#   settings on the parameter hash object itself (an instance variable, invisible to libpq), set from
#   postgresql_connection (6.1/7.0) or from the adapter's initialize (7.1+), so reconnects (which call
#   new_client(@connection_parameters) again) find them.
# * postgresql reconnects: the adapter's `reconnect!` (6.1/7.0) or `reconnect` (7.1+) first calls libpq's
#   `PG::Connection#reset`, which logs in again with the options of the original login, password included,
#   and reaches new_client only when that fails. After a rotation every reconnect would first send the
#   rotated-out password (a failed-authentication event on the server; or, while the old password still
#   works, a session that silently stays on it). For a connection that uses the hook, the raw connection
#   is closed first, so the adapter's own fallback (`rescue PG::ConnectionBad` → connect) opens a fresh one
#   through new_client, with the file's credentials. A reset costs the same new login; nothing is lost.
# * the retry budget: ActiveRecord 7.1+ `AbstractAdapter#reconnect!` retries any ConnectionNotEstablished
#   `connection_retries` times (default 1), and every login error the hook re-raises is one, so the hook's
#   whole loop would run again (6 logins, ~5 s). `reconnect!` is wrapped to open a Budget shared by the
#   hook's calls within it: once the hook has given up, Rails' retry gets the same error at once, without
#   a login. A retry after an error that is not an authentication failure (a killed connection, a refused
#   TCP connect) still connects normally, within the same 3 logins.

require "active_record"
require "secrets_sidecar"

module SecretsSidecar
  module ActiveRecord
    CONFIG_KEY = "secrets_sidecar"
    # Attempts per new connection, including the first.
    MAX_ATTEMPTS = 3
    # Wall-clock budget for the retries after the first failure (the issue asks for under 3 s in all).
    RETRY_BUDGET = 2.5
    BACKOFF = [0.2, 0.5, 1.0].freeze
    MYSQL_ACCESS_DENIED = 1045
    PG_INVALID_PASSWORD = "28P01"
    PG_AUTH_MESSAGE = /password authentication failed|authentication failed for user/i.freeze
    PG_SETTINGS_IVAR = :@__secrets_sidecar_settings

    BUDGET_KEY = :__secrets_sidecar_budget

    # Raised instead of a bare errno when the credentials cannot be read. A ConnectionNotEstablished, so
    # ActiveRecord and apps treat it as what it is.
    class CredentialsUnavailable < ::ActiveRecord::ConnectionNotEstablished; end

    # An RDS IAM token would go out without TLS, or to an unverified server. Raised before any login.
    class InsecureTransport < ::ActiveRecord::ConnectionNotEstablished; end

    # What each driver needs to send an IAM token safely: [TLS mode key, the only acceptable modes (first =
    # what the hook sets), CA key, extra options].
    IAM_TLS = {
      # enable_cleartext_plugin is added for libmysqlclient only (see mysql2_cleartext_option?).
      mysql2: [:ssl_mode, %w[verify_identity verify_ca], :sslca, {}],
      trilogy: [:ssl_mode, %w[verify_identity verify_ca], :ssl_ca, { ssl: true, enable_cleartext_plugin: true }],
      postgresql: [:sslmode, %w[verify-full verify-ca], :sslrootcert, {}],
    }.freeze

    # The logins one new connection may cost: at most MAX_ATTEMPTS, retries within RETRY_BUDGET seconds of
    # the first refused login. One Budget lives for one `connect`, or for one `reconnect!` on ActiveRecord
    # 7.1+, whose own retry calls `connect` again (see ReconnectBudget).
    class Budget
      attr_reader :attempts, :first_error, :deadline

      def initialize
        @attempts = 0
        @refused = []
        @first_error = nil
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
        @deadline ||= now + RETRY_BUDGET
      end

      def refused?(creds)
        @refused.any? { |r| r.same_login?(creds) }
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
      attr_reader :file, :url, :token_file, :ca_file

      def self.from(value)
        return nil if value.nil?
        unless value.respond_to?(:to_hash)
          raise ArgumentError, "secrets_sidecar: the `secrets_sidecar` connection option must be a hash " \
                               "with `file` (and optionally `url`, `token_file`)"
        end
        h = value.to_hash.each_with_object({}) { |(k, v), acc| acc[k.to_s] = v }
        unknown = h.keys - %w[file url token_file ca_file]
        unless unknown.empty?
          raise ArgumentError, "secrets_sidecar: unknown key(s) #{unknown.join(', ')} in `secrets_sidecar` " \
                               "(known: file, url, token_file, ca_file)"
        end
        file = h["file"].to_s
        raise ArgumentError, "secrets_sidecar: `secrets_sidecar.file` is required" if file.empty?

        url = h["url"].to_s
        token_file = h["token_file"].to_s
        ca_file = h["ca_file"].to_s
        new(file, url.empty? ? nil : url, token_file.empty? ? nil : token_file, ca_file.empty? ? nil : ca_file)
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

      def succeeded(creds)
        return unless creds.source == :pending

        identity = @file.identity
        @mutex.synchronize { @pending_memo = [identity, creds] }
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
      end

      # The connection config with credentials applied. kind :mysql2, :trilogy (username/database) or
      # :postgresql (libpq names: user/dbname). The secret's host/port/database fill only what the config
      # leaves out. An RDS IAM token also gets the driver's TLS settings (see the header).
      def apply(config, creds, kind, settings = nil)
        user_key, db_key = kind == :postgresql ? %i[user dbname] : %i[username database]
        out = strip(config)
        out = out.transform_keys(&:to_sym)
        out[user_key] = creds.username if creds.username
        out[:password] = creds.password
        out[:host] = creds.host if blank?(out[:host]) && creds.host && blank?(out[:socket])
        out[:port] = creds.port if blank?(out[:port]) && creds.port
        out[db_key] = creds.dbname if blank?(out[db_key]) && creds.dbname
        require_tls(out, kind, settings) if creds.iam_token?
        out
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

            creds = discover(source, budget, round)
            round += 1
            break unless creds
          end
          budget.attempted
          begin
            client = yield apply(config, creds, kind, settings)
            source.succeeded(creds)
            recovered(settings, creds, budget.attempts) if budget.first_error
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

        budget.give_up!
        warn("giving up after #{budget.attempts} attempt(s); raising the original error (#{settings.file})")
        raise budget.first_error
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
      # the AWSPENDING value. Sleeps with backoff between rounds while the budget lasts. nil: nothing new.
      def discover(source, budget, round)
        deadline = budget.deadline
        loop do
          fresh = ->(c) { c && !budget.refused?(c) }
          answer = nil
          if source.client
            begin
              answer = source.client.refresh
            rescue SecretsSidecar::Error => e
              warn("refresh failed: #{e.message}")
            end
          end
          begin
            current = source.file.read
            return current if fresh.call(current)
          rescue SecretsSidecar::Error => e
            warn(e.message)
          end
          if answer
            if answer["changed"]
              # The sidecar has a new AWSCURRENT; the file may lag behind its answer by a moment.
              current = safe { source.client.current }
              return current if fresh.call(current)
            end
            if answer["rotation_in_progress"]
              pending = safe { source.client.pending }
              return pending if fresh.call(pending)
            end
          end
          pause = BACKOFF[[round, BACKOFF.size - 1].min]
          round += 1
          remaining = deadline - monotonic
          return nil if remaining <= 0.05

          sleep([pause, remaining].min)
          return nil if monotonic >= deadline
        end
      end

      # Sets (or checks) the driver's TLS options for an IAM token; raises InsecureTransport naming the
      # setting when the config asks for less than a verified server.
      def require_tls(out, kind, settings)
        mode_key, modes, ca_key, extra = IAM_TLS.fetch(kind)
        mode = out[mode_key]
        if blank?(mode)
          out[mode_key] = modes.first
        elsif !modes.include?(mode.to_s.downcase)
          raise InsecureTransport, "secrets_sidecar: refusing to send an RDS IAM token with #{mode_key}: " \
                                   "#{mode.to_s.inspect}; IAM authentication needs a verified TLS connection " \
                                   "(#{mode_key}: #{modes.join(' or ')}, or leave it unset)"
        end
        if blank?(out[ca_key])
          ca = settings&.ca_file
          if blank?(ca)
            raise InsecureTransport, "secrets_sidecar: an RDS IAM token needs the CA bundle to verify the " \
                                     "server: set secrets_sidecar.ca_file (or #{ca_key}) to the RDS CA bundle, " \
                                     "e.g. /rds-ca/global-bundle.pem"
          end
          out[ca_key] = ca
        end
        extra = extra.merge(enable_cleartext_plugin: true) if kind == :mysql2 && mysql2_cleartext_option?
        out.merge!(extra) { |_key, own, _ours| own }
        if extra.key?(:enable_cleartext_plugin) && out[:enable_cleartext_plugin] != true
          raise InsecureTransport, "secrets_sidecar: an RDS IAM token is sent with the cleartext plugin; " \
                                   "enable_cleartext_plugin: #{out[:enable_cleartext_plugin].inspect} forbids it"
        end
        out
      end

      # Whether mysql2 needs `enable_cleartext_plugin` to send the token: with Oracle's libmysqlclient it
      # does; with MariaDB Connector/C (what Debian's mysql2 links, client version 3.x) the clear-password
      # plugin is built in and always allowed, and setting the option makes every connection after the
      # first fail ("Plugin mysql_clear_password could not be loaded: it is already loaded").
      def mysql2_cleartext_option?
        return true unless defined?(::Mysql2::Client) && ::Mysql2::Client.respond_to?(:info)

        !::Mysql2::Client.info[:version].to_s.start_with?("3.")
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

      def recovered(settings, creds, attempts)
        msg = "connected with the #{describe(creds)} on attempt #{attempts} (#{settings.file})"
        msg += "; rotation in progress, remembering them until the file changes" if creds.source == :pending
        logger&.warn("[secrets_sidecar] #{msg}")
      end

      def warn(message)
        logger&.warn("[secrets_sidecar] #{message}")
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
        settings = conn_params.instance_variable_get(PG_SETTINGS_IVAR) if conn_params
        settings ||= Thread.current[:__secrets_sidecar_pg_settings]
        return super unless settings

        if !conn_params.frozen? && conn_params.instance_variable_get(PG_SETTINGS_IVAR).nil?
          conn_params.instance_variable_set(PG_SETTINGS_IVAR, settings)
        end
        SecretsSidecar::ActiveRecord.connect(conn_params, settings, :postgresql) { |params| super(params) }
      end
    end

    # Prepended on ActiveRecord::Base.singleton_class for 6.1/7.0, where postgresql_connection slices the
    # config to libpq keys and calls new_client before the adapter exists.
    module PostgresConnectionHandling
      def postgresql_connection(config)
        settings = SecretsSidecar::ActiveRecord.settings_from(config)
        return super unless settings

        previous = Thread.current[:__secrets_sidecar_pg_settings]
        Thread.current[:__secrets_sidecar_pg_settings] = settings
        begin
          super
        ensure
          Thread.current[:__secrets_sidecar_pg_settings] = previous
        end
      end
    end

    # Prepended on PostgreSQLAdapter for 7.1+, where connect is lazy and uses @connection_parameters.
    module PostgresAdapterInit
      def initialize(*args, **kwargs, &block)
        super
        settings = SecretsSidecar::ActiveRecord.settings_from(@config)
        params = @connection_parameters
        if settings && params.is_a?(Hash) && !params.frozen?
          params.instance_variable_set(PG_SETTINGS_IVAR, settings)
        end
      end
    end

    # Prepended on every hooked adapter class: one Budget for a whole `reconnect!`, whose 7.1+ retry loop
    # calls the hook again after it gave up. Harmless on 6.1/7.0, which do not retry.
    module ReconnectBudget
      def reconnect!(*args, **kwargs)
        SecretsSidecar::ActiveRecord.with_budget { super }
      end
    end

    # Prepended on PostgreSQLAdapter 7.1+: its private `reconnect` calls `@raw_connection.reset` (the old
    # password) before `connect`. Without a raw connection it goes straight to `connect` → new_client.
    module PostgresReconnect
      private

      def reconnect
        if SecretsSidecar::ActiveRecord.settings_from(@config)
          SecretsSidecar::ActiveRecord.close_quietly(@raw_connection)
          @raw_connection = nil
        end
        super
      end
    end

    # Prepended on PostgreSQLAdapter 6.1/7.0: `reconnect!` calls `@connection.reset` and falls back to
    # `connect` (→ new_client) on PG::ConnectionBad, which a closed connection's reset raises at once,
    # without contacting the server.
    module PostgresReconnectBang
      def reconnect!(*args, **kwargs)
        SecretsSidecar::ActiveRecord.close_quietly(@connection) if SecretsSidecar::ActiveRecord.settings_from(@config)
        super
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
        if ::ActiveRecord.gem_version >= Gem::Version.new("7.1")
          adapter_class.prepend(PostgresAdapterInit)
        elsif ::ActiveRecord::Base.respond_to?(:postgresql_connection)
          ::ActiveRecord::Base.singleton_class.prepend(PostgresConnectionHandling)
        end
        install_reconnect_guard(adapter_class)
        install_reconnect_budget(adapter_class)
      end

      # Never let libpq's reset log in with the password of a connection's first login (see the header).
      def install_reconnect_guard(adapter_class)
        if adapter_class.private_method_defined?(:reconnect, false)
          adapter_class.prepend(PostgresReconnect)
        else
          adapter_class.prepend(PostgresReconnectBang)
        end
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
