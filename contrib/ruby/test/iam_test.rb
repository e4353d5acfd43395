# frozen_string_literal: true

require "test_helper"
require "adapters_helper"

# RDS IAM entries: the file holds a presigned token instead of a password, and the hook must send it only
# over TLS to a verified server, with each driver's own options. tests/db/iam_rails.rs logs in with it for
# real, against servers that validate the token through PAM.
class IamTest < Minitest::Test
  include SecretsSidecarTestHelpers
  AR = SecretsSidecar::ActiveRecord
  TOKEN = "db.example.internal:3306/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256" \
          "&X-Amz-Credential=AKIA%2F20261201%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20261201T200000Z" \
          "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=#{'0a' * 32}"
  CA = "/rds-ca/global-bundle.pem"

  def iam_creds
    SecretsSidecar::Credentials.new(username: "app", password: TOKEN, host: "db.example.internal", port: 3306)
  end

  def settings(**extra)
    AR::Settings.from({ file: "/secrets/db.json", ca_file: CA }.merge(extra))
  end

  def test_a_token_is_told_from_a_password_by_its_shape
    assert iam_creds.iam_token?
    refute SecretsSidecar::Credentials.new(username: "app", password: "s3cret").iam_token?
    refute SecretsSidecar::Credentials.new(username: "app", password: "h:1/?Action=connect&DBUser=app").iam_token?
  end

  # Which client library mysql2 links decides whether it needs the cleartext option (see the hook).
  def with_mysql2_client_version(version)
    meta = Mysql2::Client.singleton_class
    meta.send(:alias_method, :__real_info, :info)
    meta.send(:remove_method, :info)
    Mysql2::Client.define_singleton_method(:info) { { id: 1, version: version, header_version: version } }
    yield
  ensure
    meta.send(:remove_method, :info)
    meta.send(:alias_method, :info, :__real_info)
    meta.send(:remove_method, :__real_info)
  end

  def test_mysql2_with_libmysqlclient_gets_verify_identity_the_ca_and_the_cleartext_plugin
    out = with_mysql2_client_version("8.0.40") do
      AR.apply({ adapter: "mysql2", database: "app" }, iam_creds, :mysql2, settings)
    end
    assert_equal({ adapter: "mysql2", database: "app", username: "app", password: TOKEN, host: "db.example.internal",
                   port: 3306, ssl_mode: "verify_identity", sslca: CA, enable_cleartext_plugin: true }, out)
  end

  def test_mysql2_with_mariadb_connector_c_gets_no_cleartext_option
    out = with_mysql2_client_version("3.3.20") { AR.apply({}, iam_creds, :mysql2, settings) }
    refute out.key?(:enable_cleartext_plugin)
    assert_equal ["verify_identity", CA], out.values_at(:ssl_mode, :sslca)
  end

  def test_trilogy_gets_verify_identity_the_ca_and_the_cleartext_plugin
    out = AR.apply({ adapter: "trilogy" }, iam_creds, :trilogy, settings)
    assert_equal "verify_identity", out[:ssl_mode]
    assert_equal CA, out[:ssl_ca]
    assert_equal true, out[:ssl]
    assert_equal true, out[:enable_cleartext_plugin]
  end

  def test_postgresql_gets_verify_full_and_the_root_cert
    out = AR.apply({ "port" => 5432 }, iam_creds, :postgresql, settings)
    assert_equal({ port: 5432, user: "app", password: TOKEN, host: "db.example.internal", sslmode: "verify-full",
                   sslrootcert: CA }, out)
  end

  def test_the_configs_own_ca_and_verify_ca_mode_are_kept
    out = AR.apply({ sslmode: "verify-ca", sslrootcert: "/own.pem" }, iam_creds, :postgresql, settings)
    assert_equal ["verify-ca", "/own.pem"], out.values_at(:sslmode, :sslrootcert)
  end

  def test_a_weaker_tls_setting_is_refused_naming_it_before_any_login
    { mysql2: { ssl_mode: "disabled" }, trilogy: { ssl_mode: :required },
      postgresql: { sslmode: "prefer" } }.each do |kind, config|
      e = assert_raises(AR::InsecureTransport) { AR.apply(config, iam_creds, kind, settings) }
      key, value = config.first
      assert_includes e.message, "#{key}: #{value.to_s.inspect}"
      assert_kind_of ActiveRecord::ConnectionNotEstablished, e
      assert_no_secret e.message, TOKEN
    end
    e = assert_raises(AR::InsecureTransport) do
      with_mysql2_client_version("8.0.40") do
        AR.apply({ enable_cleartext_plugin: false }, iam_creds, :mysql2, settings)
      end
    end
    assert_includes e.message, "enable_cleartext_plugin: false"
  end

  def test_no_ca_anywhere_is_refused_naming_ca_file
    e = assert_raises(AR::InsecureTransport) do
      AR.apply({}, iam_creds, :mysql2, AR::Settings.from(file: "/secrets/db.json"))
    end
    assert_includes e.message, "secrets_sidecar.ca_file"
  end

  def test_a_password_gets_no_tls_settings
    creds = SecretsSidecar::Credentials.new(username: "app", password: "s3cret")
    assert_equal({ username: "app", password: "s3cret" }, AR.apply({}, creds, :mysql2, settings))
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
    config = { adapter: "mysql2", ssl_mode: "disabled", secrets_sidecar: { "file" => file, "ca_file" => CA } }
    assert_raises(AR::InsecureTransport) { ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(config) }
  ensure
    Mysql2::Client.singleton_class.send(:remove_method, :new)
    FileUtils.remove_entry(dir)
  end
end
