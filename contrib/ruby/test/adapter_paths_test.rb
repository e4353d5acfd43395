# frozen_string_literal: true

require_relative "test_helper"
require_relative "adapters_helper"

# The hook inside real ActiveRecord adapter objects (no database: the driver's connect is replaced), on
# whichever version runs the suite — `make test` runs it on Debian 12's 6.1 and in a Debian 13 root on
# 7.2. These are the paths where ActiveRecord itself decides how often and with what the driver logs in:
# 7.1+'s lazy PostgreSQL parameters, libpq's reset on reconnect, Rails' reconnect! retry, and trilogy.
class AdapterPathsTest < Minitest::Test
  include SecretsSidecarTestHelpers
  AR = SecretsSidecar::ActiveRecord
  PGA = ActiveRecord::ConnectionAdapters::PostgreSQLAdapter

  # A raw PG connection that records what the adapter does with it.
  class RecordingRawConnection
    attr_reader :calls

    def initialize
      @calls = []
    end

    def reset
      @calls << :reset
      self
    end

    def close
      @calls << :close
    end
  end

  def setup
    AR.reset!
    @log = StringIO.new
    AR.logger = Logger.new(@log)
    @dir = Dir.mktmpdir("secrets-sidecar-rb-")
    @file = publish(File.join(@dir, "db.json"), "username" => "app", "password" => "file-pw")
    @logins = []
  end

  def teardown
    AR.logger = nil
    FileUtils.remove_entry(@dir)
  end

  def settings_config(adapter, **extra)
    { adapter: adapter, host: "127.0.0.1", port: 1, database: "app",
      secrets_sidecar: { "file" => @file } }.merge(extra)
  end

  # --- PostgreSQL --------------------------------------------------------------------------------------

  def test_postgresql_7_1_adapter_carries_the_settings_to_new_client
    skip "7.1+ only; 6.1/7.0 is ActiveRecordHookTest#test_postgresql_connection_on_6_1_..." unless AR71
    with_pg_connect(->(kw) { raise PG::ConnectionBad, "could not connect to server: Connection refused" }) do
      adapter = PGA.new(settings_config("postgresql"))
      assert_raises(ActiveRecord::ConnectionNotEstablished) { adapter.connect! }
    end
    refute_empty @logins
    @logins.each do |kw|
      assert_equal ["app", "file-pw", "app"], kw.values_at(:user, :password, :dbname)
      refute kw.key?(:secrets_sidecar)
    end
  end

  # The one PostgreSQL reconnect guard, on every version: a connection the hook opened does not reset.
  def test_a_connection_the_hook_opened_closes_instead_of_resetting_with_its_first_password
    raw = RecordingRawConnection.new
    assert_same raw, AR.guard_reset(raw)
    e = assert_raises(PG::ConnectionBad) { raw.reset }
    assert_includes e.message, "no reset with this connection's first password"
    assert_equal [:close], raw.calls, "libpq's reset would log in with the first login's password"
  end

  def test_new_client_guards_only_the_connections_of_configs_with_the_key
    with_pg_connect(->(_kw) { RecordingRawConnection.new }) do
      plain = PGA.new_client(host: "127.0.0.1", port: 1, dbname: "app", user: "u", password: "p")
      refute plain.singleton_class.include?(AR::FreshLoginOnReset)
      plain.reset
      assert_equal [:reset], plain.calls

      hooked = AR.with_pg_settings(AR::Settings.from(file: @file)) do
        PGA.new_client(host: "127.0.0.1", port: 1, dbname: "app")
      end
      assert hooked.singleton_class.include?(AR::FreshLoginOnReset)
    end
    assert_equal [nil, "file-pw"], @logins.map { |kw| kw[:password] == "p" ? nil : kw[:password] }
  end

  def test_postgresql_7_1_reconnect_opens_a_new_login_with_the_file_instead_of_resetting_the_old_one
    skip "7.1+ only (6.1's reconnect! is covered end to end: tests/db/rails_rotation.rs counts every reset)" unless AR71
    raw = AR.guard_reset(RecordingRawConnection.new)
    adapter = PGA.new(settings_config("postgresql"))
    adapter.instance_variable_set(:@raw_connection, raw)
    with_pg_connect(->(_kw) { RecordingRawConnection.new }) { adapter.send(:reconnect) }
    assert_equal [:close], raw.calls
    assert_equal ["file-pw"], @logins.map { |kw| kw[:password] }
    fresh = adapter.instance_variable_get(:@raw_connection)
    refute_same raw, fresh
    assert fresh.singleton_class.include?(AR::FreshLoginOnReset), "the new connection is guarded too"
  end

  def test_negative_control_rails_own_postgresql_reconnect_resets_the_old_login
    skip "7.1+ only" unless AR71
    raw = RecordingRawConnection.new # not opened through the hook: no guard
    adapter = PGA.new(settings_config("postgresql"))
    adapter.instance_variable_set(:@raw_connection, raw)
    with_pg_connect(->(_kw) { :new_raw_connection }) { adapter.send(:reconnect) }
    assert_equal [:reset], raw.calls
    assert_empty @logins, "the reset reused the old login; new_client was never asked"
  end

  # --- the retry budget across ActiveRecord's own reconnect! retry ------------------------------------

  # Every refresh publishes another wrong password, so the hook always has something new to try and
  # spends its attempts without waiting for the backoff.
  def with_rotating_wrong_passwords
    n = 0
    endpoint = StubEndpoint.new do |method, _path, _h|
      if method == "POST"
        n += 1
        publish(@file, "username" => "app", "password" => "wrong-#{n}")
        [200, JSON.generate(name: "db", version_id: "v#{n}", changed: true, fetched: true,
                            rotation_in_progress: false, pending_version_id: nil)]
      else
        [404, "{}"]
      end
    end
    yield endpoint.url
  ensure
    endpoint&.close
  end

  def mysql_access_denied
    Mysql2::Error.new("Access denied for user 'app'@'localhost' (using password: YES)", nil, 1045)
  end

  def mysql2_reconnect_logins(through_budget:)
    with_rotating_wrong_passwords do |url|
      config = settings_config("mysql2", secrets_sidecar: { "file" => @file, "url" => url })
      with_mysql2_client(->(opts) { @logins << opts[:password]; raise mysql_access_denied }) do
        if AR71
          adapter = ActiveRecord::ConnectionAdapters::Mysql2Adapter.new(config)
          reconnect = through_budget ? adapter.method(:reconnect!) : adapter.method(:reconnect!).super_method
          assert_raises(ActiveRecord::ConnectionNotEstablished) { reconnect.call }
        else
          # 6.1/7.0: a new connection is ActiveRecord::Base.mysql2_connection, which does not retry.
          assert_raises(ActiveRecord::ConnectionNotEstablished) { ActiveRecord::Base.mysql2_connection(config) }
        end
      end
    end
    @logins
  end

  def test_a_connection_that_never_authenticates_costs_three_logins_on_every_version
    logins = mysql2_reconnect_logins(through_budget: true)
    assert_equal ["file-pw", "wrong-1", "wrong-2"], logins
    assert_includes @log.string, "giving up after 3 attempt(s)"
    assert_no_secret @log.string, "file-pw", "wrong-1", "wrong-2"
  end

  def test_negative_control_rails_7_1_reconnect_retry_runs_the_hook_twice_without_the_budget
    skip "7.1+ only: 6.1/7.0 do not retry reconnect!" unless AR71
    logins = mysql2_reconnect_logins(through_budget: false)
    assert_equal 6, logins.size, "ActiveRecord's connection_retries (1) repeats the hook's whole loop"
  end

  def test_a_retry_after_a_non_authentication_error_still_connects
    skip "7.1+ only: 6.1/7.0 do not retry reconnect!" unless AR71
    calls = 0
    impl = lambda do |opts|
      calls += 1
      @logins << opts[:password]
      raise Mysql2::Error.new("Can't connect to MySQL server on '127.0.0.1' (111)", nil, 2003) if calls == 1

      Struct.new(:query_options).new({ password: opts[:password] })
    end
    adapter = ActiveRecord::ConnectionAdapters::Mysql2Adapter.new(settings_config("mysql2"))
    with_mysql2_client(impl) do
      # configure_connection would query the stand-in client: stop after the login.
      adapter.define_singleton_method(:configure_connection) { nil }
      adapter.reconnect!
    end
    assert_equal ["file-pw", "file-pw"], @logins
  end

  # --- trilogy (7.1+: in ActiveRecord itself) -----------------------------------------------------------

  def test_trilogy_adapter_gets_the_files_credentials_through_its_load_hook
    skip "trilogy is in ActiveRecord from 7.1" unless AR71
    seen = nil
    with_trilogy(->(opts) { seen = opts; raise Trilogy::BaseConnectionError, "connection refused" }) do
      adapter = ActiveRecord::ConnectionAdapters::TrilogyAdapter.new(settings_config("trilogy"))
      assert_raises(ActiveRecord::ConnectionNotEstablished) { adapter.connect! }
    end
    assert_equal ["app", "file-pw", "app"], seen.values_at(:username, :password, :database)
    refute seen.key?(:secrets_sidecar)
  end

  def test_trilogy_access_denied_is_retried_within_the_same_three_logins
    skip "trilogy is in ActiveRecord from 7.1" unless AR71
    with_rotating_wrong_passwords do |url|
      config = settings_config("trilogy", secrets_sidecar: { "file" => @file, "url" => url })
      denied = lambda do |opts|
        @logins << opts[:password]
        # What trilogy raises for a refused login: ProtocolError.from_code → a BaseConnectionError.
        raise Trilogy::ProtocolError.from_code("Access denied for user 'app'@'localhost'", 1045)
      end
      with_trilogy(denied) do
        adapter = ActiveRecord::ConnectionAdapters::TrilogyAdapter.new(config)
        e = assert_raises(ActiveRecord::DatabaseConnectionError) { adapter.reconnect! }
        assert_equal 1045, e.cause.error_code
      end
    end
    assert_equal ["file-pw", "wrong-1", "wrong-2"], @logins
  end

  # An IAM token through the real TrilogyAdapter: ActiveRecord turns the hook's "verify_identity" into the
  # driver's constant, which must be the value trilogy's C code reads as TRILOGY_SSL_VERIFY_IDENTITY (1 in
  # trilogy 2.9's inc/trilogy/socket.h), not the stand-in's own idea of it.
  def test_trilogy_gets_the_drivers_verify_identity_for_an_iam_token
    skip "trilogy is in ActiveRecord from 7.1" unless AR71
    token = "db.internal:3306/?Action=connect&DBUser=app&X-Amz-Signature=#{'ab' * 32}"
    publish(@file, "username" => "app", "password" => token)
    seen = nil
    with_trilogy(->(opts) { seen = opts; raise Trilogy::BaseConnectionError, "connection refused" }) do
      config = settings_config("trilogy", host: "db.internal",
                                          secrets_sidecar: { "file" => @file, "ca_file" => "/ca.pem" })
      adapter = ActiveRecord::ConnectionAdapters::TrilogyAdapter.new(config)
      assert_raises(ActiveRecord::ConnectionNotEstablished) { adapter.connect! }
    end
    assert_equal [1, true, "/ca.pem", true], seen.values_at(:ssl_mode, :ssl, :ssl_ca, :enable_cleartext_plugin)
  end

  # --- mysql2 reconnect: true ---------------------------------------------------------------------------

  def test_mysql2_reconnect_true_is_turned_off_for_hooked_connections_with_one_warning
    seen = []
    with_mysql2_client(->(opts) { seen << opts; Struct.new(:query_options).new({}) }) do
      2.times { ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(settings_config("mysql2", reconnect: true)) }
      ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(adapter: "mysql2", host: "h", reconnect: true)
    end
    assert_equal [false, false, true], seen.map { |o| o[:reconnect] }, "only connections without the hook keep it"
    assert_equal 1, @log.string.scan("reconnect: true is ignored").size
  end

  private

  def with_pg_connect(impl)
    logins = @logins
    original = PG.singleton_class.instance_method(:connect)
    PG.singleton_class.send(:remove_method, :connect) if PG.singleton_class.instance_methods(false).include?(:connect)
    PG.singleton_class.define_method(:connect) do |*_a, **kw|
      logins << kw
      impl.call(kw)
    end
    yield
  ensure
    PG.singleton_class.send(:remove_method, :connect)
    PG.singleton_class.define_method(:connect, original)
  end

  def with_mysql2_client(impl)
    Mysql2::Client.define_singleton_method(:new) { |opts| impl.call(opts) }
    yield
  ensure
    Mysql2::Client.singleton_class.send(:remove_method, :new)
  end

  def with_trilogy(impl)
    Trilogy.singleton_class.send(:alias_method, :__stand_in_new, :new)
    Trilogy.singleton_class.send(:remove_method, :new)
    Trilogy.define_singleton_method(:new) { |opts| impl.call(opts) }
    yield
  ensure
    Trilogy.singleton_class.send(:remove_method, :new)
    Trilogy.singleton_class.send(:alias_method, :new, :__stand_in_new)
    Trilogy.singleton_class.send(:remove_method, :__stand_in_new)
  end
end
