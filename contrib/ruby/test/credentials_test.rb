# frozen_string_literal: true

require_relative "test_helper"
require "pp"
require "yaml"

class CredentialsTest < Minitest::Test
  include SecretsSidecarTestHelpers

  def creds
    SecretsSidecar::Credentials.new(username: "app", password: PASSWORD, host: "h", port: 1, dbname: "d")
  end

  def test_inspect_to_s_and_interpolation_redact_the_password
    c = creds
    assert_includes c.inspect, "password=[REDACTED]"
    assert_includes c.inspect, 'username="app"'
    assert_no_secret c.inspect
    assert_no_secret c.to_s
    assert_no_secret "#{c}"
    assert_no_secret [c].inspect
    assert_no_secret({ c: c }.inspect)
  end

  def test_pretty_print_and_yaml_redact_the_password
    assert_no_secret c_pp = PP.pp(creds, +"")
    assert_includes c_pp, "[REDACTED]"
    assert_no_secret creds.to_yaml
  end

  def test_marshal_is_refused
    assert_raises(TypeError) { Marshal.dump(creds) }
  end

  def test_same_login_ignores_source_but_not_password
    a = creds
    assert a.same_login?(a.with_source(:pending))
    b = SecretsSidecar::Credentials.new(username: "app", password: "other", host: "h", port: 1, dbname: "d")
    refute a.same_login?(b)
  end

  def test_objects_holding_credentials_do_not_show_them
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "password" => PASSWORD)
      f = SecretsSidecar::CredentialsFile.new(path)
      f.read
      assert_no_secret f.inspect
      token = File.join(d, ".token")
      File.write(token, "tok-#{PASSWORD}")
      client = SecretsSidecar::Client.new("http://127.0.0.1:1/v1/secrets/db", token_file: token)
      assert_no_secret client.inspect
    end
  end
end
