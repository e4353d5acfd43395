# frozen_string_literal: true

module SecretsSidecar
  module ActiveRecord
    # When an RDS IAM auth token may leave the process, per driver and version.
    #
    # A token logs in as its user for 15 minutes, wherever it is presented: it must only reach a server
    # whose certificate the driver has checked against the CA (the chain) *and* against the host the app
    # dials (the name). A driver that checks the chain alone would hand the token to anyone holding any
    # certificate of that CA (every RDS CA signs many). So the hook sends a token only where the driver will
    # check both; anywhere else it raises InsecureTransport, naming the driver, its version and the fix,
    # before any connection is opened. What each driver does (read in their sources; tests/db/iam_tls.rs
    # shows it against servers with a certificate for another name and one from another CA):
    #
    # * pg: libpq's sslmode=verify-full checks chain and name; verify-ca only the chain.
    # * mysql2 0.5.5+: ssl_mode verify_identity becomes MYSQL_OPT_SSL_MODE=VERIFY_IDENTITY with Oracle's
    #   libmysqlclient, MYSQL_OPT_SSL_VERIFY_SERVER_CERT with MariaDB Connector/C (where verify_ca only warns).
    # * mysql2 0.5.4 and older on MariaDB Connector/C (Debian 12's 0.5.3) ignore ssl_mode ("does not support
    #   setting ssl_mode") and sslverify (a connect flag Connector/C 3 no longer reads): the chain is checked,
    #   the name never. Connector/C still reads ssl-verify-server-cert from an option file, and mysql2 passes
    #   default_file on, so the hook points default_file at verify-server-cert.cnf beside this file. A config
    #   with a default_file or default_group of its own cannot have both: refused.
    # * mysql2 0.5.4 and older on libmysqlclient: with 5.7's headers ssl_mode is ignored too. Refused.
    # * MariaDB Connector/C 3.4+ checks no name when the host is literally 127.0.0.1 or ::1 (it calls that a
    #   local connection; mariadb-connector-c CONC-712), whatever mysql2's version. Refused for those hosts:
    #   dial the name on the certificate.
    # * trilogy 2.8+ (2.8 added enable_cleartext_plugin, which the token needs): ssl_mode verify_identity
    #   checks chain and name.
    module IamTls
      OPTION_FILE = File.expand_path("verify-server-cert.cnf", __dir__)
      LOOPBACK_LITERALS = %w[127.0.0.1 ::1].freeze
      MYSQL2_SSL_MODE = Gem::Version.new("0.5.5")
      TRILOGY_CLEARTEXT = Gem::Version.new("2.8")
      CONNECTOR_C_LOCAL_EXEMPTION = Gem::Version.new("3.4")
      LIBMYSQLCLIENT_SSL_MODE = Gem::Version.new("5.7.11")
      MYSQL2_FIX = "mysql2 >= 0.5.5 with ssl_mode: verify_identity"

      module_function

      # The TLS options an IAM token needs with `kind`'s driver, given the connection config `out` (symbol
      # keys) and `ca_file` (the secrets_sidecar block's). Raises InsecureTransport instead of returning
      # options that would not make the driver check the server. The config's own values win where they
      # are as strict.
      def options(kind, out, ca_file)
        case kind
        when :postgresql then postgresql(out, ca_file)
        when :mysql2
          info = ::Mysql2::Client.info
          mysql2(out, ca_file, mysql2_version: ::Mysql2::VERSION, client_version: info[:version].to_s)
        when :trilogy then trilogy(out, ca_file, trilogy_version: trilogy_version)
        else raise ArgumentError, "secrets_sidecar: unknown adapter kind #{kind.inspect}"
        end
      end

      def postgresql(out, ca_file)
        mode = out[:sslmode]
        unless blank?(mode) || mode.to_s.downcase == "verify-full"
          refuse("sslmode: #{mode.to_s.inspect} does not check the server's name (pg #{pg_version})",
                 "sslmode: verify-full, or leave it unset")
        end
        { sslmode: "verify-full" }.merge(ca(out, %i[sslrootcert], :sslrootcert, ca_file))
      end

      # client_version: Mysql2::Client.info[:version], the client library's own version string.
      def mysql2(out, ca_file, mysql2_version:, client_version:)
        library, version = client_library(client_version)
        who = "mysql2 #{mysql2_version} on #{library} #{client_version}"
        mode = out[:ssl_mode]
        unless blank?(mode) || mode_name(mode) == "VERIFY_IDENTITY"
          refuse("ssl_mode: #{mode.to_s.inspect} does not check the server's name (#{who})",
                 "ssl_mode: verify_identity, or leave it unset")
        end
        connector_c = library == "MariaDB Connector/C"
        if connector_c && version >= CONNECTOR_C_LOCAL_EXEMPTION && LOOPBACK_LITERALS.include?(out[:host].to_s)
          refuse("#{library} #{client_version} checks no certificate name for host #{out[:host]} (#{who})",
                 "dial the database by the name on its certificate (the RDS endpoint), not an IP literal")
        end
        extra = {}
        if Gem::Version.new(mysql2_version) >= MYSQL2_SSL_MODE
          if !connector_c && version < LIBMYSQLCLIENT_SSL_MODE
            refuse("#{who} cannot be made to check the server's name",
                   "libmysqlclient >= 5.7.11 or MariaDB Connector/C")
          end
          extra[:ssl_mode] = "verify_identity"
        elsif connector_c
          if out.key?(:default_file) || out.key?(:default_group)
            refuse("#{who} checks the server's name only through an option file, and the config names its " \
                   "own default_file/default_group", "#{MYSQL2_FIX}, or remove default_file and default_group")
          end
          extra[:default_file] = OPTION_FILE
        else
          refuse("#{who} ignores ssl_mode", MYSQL2_FIX)
        end
        extra.merge!(ca(out, %i[sslca sslcapath], :sslca, ca_file))
        # The token travels as a cleartext password. libmysqlclient sends one only when allowed; MariaDB
        # Connector/C always may, and the option makes every login after a process's first fail ("Plugin
        # mysql_clear_password could not be loaded: it is already loaded").
        extra.merge!(cleartext(out, "#{who} sends") { !connector_c })
        extra
      end

      def trilogy(out, ca_file, trilogy_version:)
        who = "trilogy #{trilogy_version}"
        if Gem::Version.new(trilogy_version) < TRILOGY_CLEARTEXT
          refuse("#{who} cannot send a token: enable_cleartext_plugin came with trilogy 2.8",
                 "trilogy >= 2.8 with ssl_mode: verify_identity")
        end
        mode = out[:ssl_mode]
        verify_identity = mode.is_a?(Integer) ? mode == ::Trilogy::SSL_VERIFY_IDENTITY : mode_name(mode) == "VERIFY_IDENTITY"
        unless blank?(mode) || verify_identity
          refuse("ssl_mode: #{mode.to_s.inspect} does not check the server's name (#{who})",
                 "ssl_mode: verify_identity, or leave it unset")
        end
        if out.key?(:ssl) && out[:ssl] != true
          refuse("ssl: #{out[:ssl].inspect} turns TLS off (#{who})", "ssl: true, or leave it unset")
        end
        { ssl: true, ssl_mode: "verify_identity" }
          .merge(ca(out, %i[ssl_ca ssl_capath], :ssl_ca, ca_file))
          .merge(cleartext(out, "#{who} sends") { true })
      end

      # [library name, Gem::Version] for Mysql2::Client.info[:version]: MariaDB Connector/C reports 3.x (or a
      # MariaDB server version, 10+, when mysql2 links the server's libmariadb); libmysqlclient 5.x/8.x/9.x.
      def client_library(client_version)
        version = Gem::Version.new(client_version[/\A\d+(\.\d+)*/] || "0")
        major = version.segments.first
        if major == 3
          ["MariaDB Connector/C", version]
        elsif major >= 10 && major < 20
          # The server's libmariadb: Connector/C 3.4 came with MariaDB 11.4.
          ["MariaDB Connector/C", Gem::Version.new(major >= 11 ? "3.4" : "3.3")]
        else
          ["libmysqlclient", version]
        end
      end

      def ca(out, own_keys, key, ca_file)
        return {} if own_keys.any? { |k| !blank?(out[k]) }

        if blank?(ca_file)
          raise InsecureTransport, "secrets_sidecar: an RDS IAM token needs the CA bundle to verify the " \
                                   "server: set secrets_sidecar.ca_file (or #{key}) to the RDS CA bundle, " \
                                   "e.g. /rds-ca/global-bundle.pem"
        end
        { key => ca_file }
      end

      def cleartext(out, who)
        return {} unless yield

        if out.key?(:enable_cleartext_plugin) && out[:enable_cleartext_plugin] != true
          refuse("#{who} the token with the cleartext plugin, and enable_cleartext_plugin: " \
                 "#{out[:enable_cleartext_plugin].inspect} forbids it", "enable_cleartext_plugin: true, or leave it unset")
        end
        { enable_cleartext_plugin: true }
      end

      def refuse(problem, fix)
        raise InsecureTransport, "secrets_sidecar: refusing to send an RDS IAM token: #{problem}; fix: #{fix}"
      end

      def mode_name(mode)
        mode.to_s.upcase.delete_prefix("SSL_MODE_")
      end

      def pg_version
        defined?(::PG::VERSION) ? ::PG::VERSION : "?"
      end

      def trilogy_version
        defined?(::Trilogy::VERSION) ? ::Trilogy::VERSION : "0"
      end

      def blank?(value)
        value.nil? || (value.respond_to?(:empty?) && value.empty?)
      end
    end
  end
end
