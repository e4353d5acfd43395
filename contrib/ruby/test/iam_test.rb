# frozen_string_literal: true

require_relative "test_helper"
require_relative "adapters_helper"

# RDS IAM entries: the file holds a presigned token instead of a password, and the hook must send it only
# where the driver will check the server's certificate chain and name, with each driver's own options, and
# refuse anywhere else naming the driver, its version and the fix. The decisions are pure functions of the
# driver and client-library versions (SecretsSidecar::ActiveRecord::IamTls), tested here for the versions
# that matter; tests/db/iam_tls.rs shows the drivers of both Debian stacks refusing a certificate for
# another name and one from another CA before the token is sent, and tests/db/iam_rails.rs logs in for real.
class IamTest < Minitest::Test
  include SecretsSidecarTestHelpers
  AR = SecretsSidecar::ActiveRecord
  TLS = AR::IamTls
  TOKEN = "db.example.internal:3306/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256" \
          "&X-Amz-Credential=AKIA%2F20261201%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20261201T200000Z" \
          "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=#{'0a' * 32}"
  CA = "/rds-ca/global-bundle.pem"
  HOST = "db.example.internal"

  def iam_creds
    SecretsSidecar::Credentials.new(username: "app", password: TOKEN, host: HOST, port: 3306)
  end

  def settings(**extra)
    AR::Settings.from({ file: "/secrets/db.json", ca_file: CA }.merge(extra))
  end

  def mysql2(config = {}, mysql2:, client:)
    TLS.mysql2({ host: HOST }.merge(config), CA, mysql2_version: mysql2, client_version: client)
  end

  def assert_refused(fragments)
    e = assert_raises(AR::InsecureTransport) { yield }
    assert_kind_of ActiveRecord::ConnectionNotEstablished, e
    assert e.message.start_with?("secrets_sidecar: refusing to send an RDS IAM token: "), e.message
    Array(fragments).each { |f| assert_includes e.message, f }
    assert_no_secret e.message, TOKEN
    e
  end

  def test_a_token_is_told_from_a_password_by_its_shape
    assert iam_creds.iam_token?
    refute SecretsSidecar::Credentials.new(username: "app", password: "s3cret").iam_token?
    refute SecretsSidecar::Credentials.new(username: "app", password: "h:1/?Action=connect&DBUser=app").iam_token?
  end

  # --- mysql2 -------------------------------------------------------------------------------------------

  def test_mysql2_0_5_5_on_connector_c_gets_verify_identity_and_the_ca_and_no_cleartext_option
    assert_equal({ ssl_mode: "verify_identity", sslca: CA }, mysql2(mysql2: "0.5.5", client: "3.4.10"))
    assert_equal({ ssl_mode: "verify_identity", sslca: CA }, mysql2(mysql2: "0.5.7", client: "3.3.20"))
  end

  def test_mysql2_0_5_5_on_libmysqlclient_also_gets_the_cleartext_plugin
    assert_equal({ ssl_mode: "verify_identity", sslca: CA, enable_cleartext_plugin: true },
                 mysql2(mysql2: "0.5.6", client: "8.0.40"))
  end

  # Debian 12's mysql2: ssl_mode is ignored, the option file is the way to the name check.
  def test_mysql2_0_5_3_on_connector_c_gets_the_option_file_that_turns_the_name_check_on
    assert_equal({ default_file: TLS::OPTION_FILE, sslca: CA }, mysql2(mysql2: "0.5.3", client: "3.3.20"))
    assert_equal({ default_file: TLS::OPTION_FILE, sslca: CA }, mysql2(mysql2: "0.5.4", client: "10.6.11"))
    text = File.read(TLS::OPTION_FILE)
    assert_equal ["[client]", "ssl-verify-server-cert=1"], text.lines.map(&:strip).reject { |l| l.empty? || l.start_with?("#") }
  end

  def test_the_option_file_ships_in_the_gem
    spec = Gem::Specification.load(File.expand_path("../secrets_sidecar.gemspec", __dir__))
    assert_includes spec.files, "lib/secrets_sidecar/active_record/verify-server-cert.cnf"
    assert_equal File.expand_path("../lib/secrets_sidecar/active_record/verify-server-cert.cnf", __dir__), TLS::OPTION_FILE
  end

  def test_mysql2_0_5_3_with_its_own_option_file_is_refused
    %i[default_file default_group].each do |key|
      assert_refused(["mysql2 0.5.3 on MariaDB Connector/C 3.3.20", "default_file/default_group",
                      "fix: mysql2 >= 0.5.5 with ssl_mode: verify_identity"]) do
        mysql2({ key => "/etc/mysql/my.cnf" }, mysql2: "0.5.3", client: "3.3.20")
      end
    end
  end

  def test_mysql2_before_0_5_5_on_libmysqlclient_is_refused_naming_the_fix
    assert_refused(["mysql2 0.5.3 on libmysqlclient 8.0.40 ignores ssl_mode",
                    "fix: mysql2 >= 0.5.5 with ssl_mode: verify_identity"]) do
      mysql2(mysql2: "0.5.3", client: "8.0.40")
    end
  end

  def test_libmysqlclient_without_full_ssl_mode_is_refused
    assert_refused(["mysql2 0.5.5 on libmysqlclient 5.7.10", "libmysqlclient >= 5.7.11"]) do
      mysql2(mysql2: "0.5.5", client: "5.7.10")
    end
  end

  # Connector/C 3.4 calls 127.0.0.1 and ::1 a local connection and checks no certificate name for them.
  def test_connector_c_3_4_is_refused_for_a_loopback_ip_literal_whatever_the_mysql2_version
    ["127.0.0.1", "::1"].each do |host|
      %w[0.5.3 0.5.5].each do |version|
        assert_refused(["MariaDB Connector/C 3.4.10 checks no certificate name for host #{host}",
                        "fix: dial the database by the name on its certificate"]) do
          mysql2({ host: host }, mysql2: version, client: "3.4.10")
        end
      end
    end
    # Connector/C 3.3 and libmysqlclient check the name of 127.0.0.1 too (against an IP SAN).
    assert_equal CA, mysql2({ host: "127.0.0.1" }, mysql2: "0.5.3", client: "3.3.20")[:sslca]
    assert_equal "verify_identity", mysql2({ host: "127.0.0.1" }, mysql2: "0.5.5", client: "8.0.40")[:ssl_mode]
    assert_equal "verify_identity", mysql2({ host: "LOCALHOST" }, mysql2: "0.5.5", client: "3.4.10")[:ssl_mode]
  end

  def test_mysql2_ssl_modes_that_do_not_check_the_name_are_refused_and_verify_identity_in_any_spelling_kept
    %w[disabled preferred required verify_ca].each do |mode|
      assert_refused(["ssl_mode: \"#{mode}\" does not check the server's name (mysql2 0.5.5 on MariaDB Connector/C 3.4.10)",
                      "fix: ssl_mode: verify_identity, or leave it unset"]) do
        mysql2({ ssl_mode: mode }, mysql2: "0.5.5", client: "3.4.10")
      end
    end
    ["VERIFY_IDENTITY", :verify_identity, "SSL_MODE_VERIFY_IDENTITY", ""].each do |mode|
      assert_equal CA, mysql2({ ssl_mode: mode }, mysql2: "0.5.5", client: "3.4.10")[:sslca]
    end
  end

  def test_mysql2_cleartext_plugin_turned_off_is_refused
    assert_refused("enable_cleartext_plugin: false forbids it") do
      mysql2({ enable_cleartext_plugin: false }, mysql2: "0.5.5", client: "8.0.40")
    end
  end

  # --- trilogy and pg -------------------------------------------------------------------------------------

  def test_trilogy_2_8_gets_verify_identity_the_ca_and_the_cleartext_plugin
    assert_equal({ ssl: true, ssl_mode: "verify_identity", ssl_ca: CA, enable_cleartext_plugin: true },
                 TLS.trilogy({ host: HOST }, CA, trilogy_version: "2.8.0"))
  end

  def test_trilogy_before_2_8_or_with_a_weaker_mode_is_refused
    assert_refused(["trilogy 2.7.0 cannot send a token", "fix: trilogy >= 2.8 with ssl_mode: verify_identity"]) do
      TLS.trilogy({}, CA, trilogy_version: "2.7.0")
    end
    skip "the trilogy constants come with ActiveRecord 7.1+'s adapter tests" unless AR71
    assert_refused("ssl_mode: \"2\" does not check the server's name (trilogy 2.9.0)") do
      TLS.trilogy({ ssl_mode: Trilogy::SSL_VERIFY_CA }, CA, trilogy_version: "2.9.0")
    end
    assert_refused("ssl: false turns TLS off") { TLS.trilogy({ ssl: false }, CA, trilogy_version: "2.9.0") }
    assert_equal CA, TLS.trilogy({ ssl_mode: Trilogy::SSL_VERIFY_IDENTITY }, CA, trilogy_version: "2.9.0")[:ssl_ca]
  end

  def test_postgresql_gets_verify_full_and_the_root_cert
    out = AR.apply({ "port" => 5432 }, iam_creds, :postgresql, settings)
    assert_equal({ port: 5432, user: "app", password: TOKEN, host: HOST, sslmode: "verify-full", sslrootcert: CA }, out)
  end

  def test_postgresql_modes_that_do_not_check_the_name_are_refused
    %w[disable prefer require verify-ca].each do |mode|
      assert_refused(["sslmode: \"#{mode}\" does not check the server's name (pg #{PG::VERSION})",
                      "fix: sslmode: verify-full, or leave it unset"]) do
        AR.apply({ sslmode: mode }, iam_creds, :postgresql, settings)
      end
    end
  end

  def test_the_configs_own_ca_is_kept
    out = AR.apply({ sslmode: "verify-full", sslrootcert: "/own.pem" }, iam_creds, :postgresql, settings)
    assert_equal ["verify-full", "/own.pem"], out.values_at(:sslmode, :sslrootcert)
  end

  def test_no_ca_anywhere_is_refused_naming_ca_file
    e = assert_raises(AR::InsecureTransport) do
      AR.apply({}, iam_creds, :postgresql, AR::Settings.from(file: "/secrets/db.json"))
    end
    assert_includes e.message, "secrets_sidecar.ca_file"
  end

  def test_a_password_gets_no_tls_settings
    creds = SecretsSidecar::Credentials.new(username: "app", password: "s3cret")
    assert_equal({ username: "app", password: "s3cret" }, AR.apply({}, creds, :mysql2, settings))
  end

  # What this stack's own mysql2 gets through apply (Debian 12: 0.5.3 on Connector/C 3.3; Debian 13: 0.5.5
  # on Connector/C 3.4).
  def test_this_stacks_mysql2_gets_the_name_check_its_version_needs
    out = AR.apply({ host: HOST }, iam_creds, :mysql2, settings)
    if Gem::Version.new(Mysql2::VERSION) >= Gem::Version.new("0.5.5")
      assert_equal "verify_identity", out[:ssl_mode]
    else
      assert_equal TLS::OPTION_FILE, out[:default_file]
    end
    assert_equal CA, out[:sslca]
  end

  def test_a_processs_first_mysql2_iam_logins_go_one_at_a_time
    AR.instance_variable_set(:@cleartext_loaded, false)
    inside = 0
    most = 0
    lock = Mutex.new
    login = lambda do
      lock.synchronize { most = [most, inside += 1].max }
      sleep 0.05
      lock.synchronize { inside -= 1 }
      :client
    end
    Array.new(4) { Thread.new { AR.cleartext_login(:mysql2, { password: TOKEN }, &login) } }.each(&:join)
    assert_equal 1, most, "two first logins ran at once"
    # Once one succeeded, logins run concurrently again; passwords and other drivers never wait.
    Array.new(4) { Thread.new { AR.cleartext_login(:mysql2, { password: TOKEN }, &login) } }.each(&:join)
    assert_operator most, :>, 1
  ensure
    AR.instance_variable_set(:@cleartext_loaded, false)
  end

  def test_the_mysql2_hook_refuses_before_the_driver_is_called
    dir = Dir.mktmpdir("secrets-sidecar-rb-")
    file = publish(File.join(dir, "db.json"), "username" => "app", "password" => TOKEN)
    Mysql2::Client.define_singleton_method(:new) { |_opts| raise "the driver was called with a token and no TLS" }
    config = { adapter: "mysql2", host: HOST, ssl_mode: "verify_ca", secrets_sidecar: { "file" => file, "ca_file" => CA } }
    assert_raises(AR::InsecureTransport) { ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(config) }
  ensure
    Mysql2::Client.singleton_class.send(:remove_method, :new)
    FileUtils.remove_entry(dir)
  end
end
