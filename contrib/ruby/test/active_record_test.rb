# frozen_string_literal: true

require_relative "test_helper"
require_relative "adapters_helper"

# Unit tests of the ActiveRecord hook: configuration, what reaches the driver, error classification and
# the retry policy. The driver calls are replaced by blocks here; tests/db/rails_rotation.rs runs the same hook
# against real MariaDB/PostgreSQL servers and the real sidecar.
class ActiveRecordHookTest < Minitest::Test
  include SecretsSidecarTestHelpers
  AR = SecretsSidecar::ActiveRecord

  def setup
    AR.reset!
    @log = StringIO.new
    AR.logger = Logger.new(@log)
    @dir = Dir.mktmpdir("secrets-sidecar-rb-")
    @file = publish(File.join(@dir, "db.json"), "username" => "app", "password" => "old-pw")
  end

  def teardown
    AR.logger = nil
    FileUtils.remove_entry(@dir)
  end

  def auth_error(number = 1045)
    Mysql2::Error.new("Access denied for user 'app'@'localhost' (using password: YES)", nil, number)
  end

  # What Rails 6.1 raises from new_client: ConnectionNotEstablished, the driver error as cause.
  def rails_wrapped(error)
    raise error
  rescue StandardError => e
    begin
      raise ActiveRecord::ConnectionNotEstablished, e.message
    rescue StandardError => wrapped
      wrapped
    end
  end

  # --- installation ---------------------------------------------------------------------------------

  def test_requiring_installs_the_hooks_on_the_adapters
    expected = AR71 ? %i[mysql2 trilogy postgresql] : %i[mysql2 postgresql]
    assert_equal expected, AR.installed
    assert ActiveRecord::ConnectionAdapters::Mysql2Adapter.singleton_class.ancestors.include?(AR::MysqlNewClient)
    assert_includes ActiveRecord::ConnectionAdapters::Mysql2Adapter.singleton_class.ancestors.first(2),
                    AR::MysqlNewClient
  end

  # --- configuration --------------------------------------------------------------------------------

  def test_settings_accept_string_and_symbol_keys
    s1 = AR.settings_from(secrets_sidecar: { file: "/s/db.json", url: "http://127.0.0.1:2773/v1/secrets/db" })
    s2 = AR.settings_from("secrets_sidecar" => { "file" => "/s/db.json", "url" => "http://127.0.0.1:2773/v1/secrets/db" })
    assert_equal s1, s2
    assert_equal "/s/db.json", s1.file
    assert_nil s1.token_file
    assert_nil AR.settings_from(adapter: "mysql2")
  end

  def test_settings_require_file_and_reject_unknown_keys
    e = assert_raises(ArgumentError) { AR.settings_from(secrets_sidecar: { url: "http://x/" }) }
    assert_includes e.message, "secrets_sidecar.file"
    e = assert_raises(ArgumentError) { AR.settings_from(secrets_sidecar: { file: "/f", pasword: "x" }) }
    assert_includes e.message, "pasword"
  end

  def test_apply_strips_the_key_and_sets_credentials_without_mutating_the_config
    config = { adapter: "mysql2", host: "db.internal", database: "app", username: "stale", password: "stale",
               secrets_sidecar: { file: @file } }.freeze
    creds = SecretsSidecar::Credentials.new(username: "app", password: PASSWORD, host: "secret-host",
                                            port: 3307, dbname: "secretdb")
    out = AR.apply(config, creds, :mysql2)
    refute out.key?(:secrets_sidecar)
    assert_equal "app", out[:username]
    assert_equal PASSWORD, out[:password]
    assert_equal "db.internal", out[:host], "the config's host must win over the secret's"
    assert_equal "app", out[:database], "the config's database must win over the secret's"
    assert_equal 3307, out[:port], "port missing in the config comes from the secret"
    assert_equal "stale", config[:password]
  end

  def test_apply_uses_libpq_names_for_postgresql
    creds = SecretsSidecar::Credentials.new(username: "app", password: PASSWORD, host: "h", dbname: "d")
    out = AR.apply({ "port" => 5432 }, creds, :postgresql)
    assert_equal({ port: 5432, user: "app", password: PASSWORD, host: "h", dbname: "d" }, out)
  end

  def test_mysql2_driver_never_sees_the_key_and_password_is_dropped_from_query_options
    seen = nil
    fake_client = Struct.new(:query_options).new({ password: PASSWORD, as: :array })
    with_driver(->(opts) { seen = opts; fake_client }) do
      config = { adapter: "mysql2", host: "127.0.0.1", secrets_sidecar: { "file" => @file } }.freeze
      assert_same fake_client, ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(config)
    end
    refute seen.key?(:secrets_sidecar)
    assert_equal ["app", "old-pw"], seen.values_at(:username, :password)
    refute fake_client.query_options.key?(:password)
  end

  def test_config_without_the_key_passes_through_untouched
    seen = nil
    with_driver(->(opts) { seen = opts; Struct.new(:query_options).new({}) }) do
      ActiveRecord::ConnectionAdapters::Mysql2Adapter.new_client(host: "h", username: "u", password: "p")
    end
    assert_equal({ host: "h", username: "u", password: "p" }, seen)
  end

  def test_postgresql_connection_on_6_1_carries_the_settings_to_new_client
    skip "6.1/7.0 only; 7.1+ is AdapterPathsTest#test_postgresql_7_1_adapter_carries_the_settings_to_new_client" if AR71
    seen = nil
    original = PG.singleton_class.instance_method(:connect)
    PG.singleton_class.send(:remove_method, :connect)
    PG.singleton_class.define_method(:connect) do |*_a, **kw|
      seen = kw
      raise PG::ConnectionBad, "could not connect to server: Connection refused"
    end
    config = { adapter: "postgresql", host: "127.0.0.1", port: 1, database: "app",
               secrets_sidecar: { "file" => @file } }
    assert_raises(ActiveRecord::ConnectionNotEstablished) { ActiveRecord::Base.postgresql_connection(config) }
    assert_equal ["app", "old-pw", "app"], seen.values_at(:user, :password, :dbname)
    refute seen.key?(:secrets_sidecar)
  ensure
    if original
      PG.singleton_class.send(:remove_method, :connect)
      PG.singleton_class.define_method(:connect, original)
    end
  end

  def test_unreadable_file_is_a_connection_not_established_naming_the_path
    missing = File.join(@dir, "nope.json")
    e = assert_raises(AR::CredentialsUnavailable) do
      AR.connect({}, AR::Settings.from(file: missing), :mysql2) { flunk "connected without credentials" }
    end
    assert_kind_of ActiveRecord::ConnectionNotEstablished, e
    assert_includes e.message, missing
  end

  # --- error classification ---------------------------------------------------------------------------

  def test_auth_failure_detection_walks_the_cause_chain
    assert AR.auth_failure?(auth_error)
    assert AR.auth_failure?(rails_wrapped(auth_error))
    pg = PG::ConnectionBad.new("connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  " \
                               "password authentication failed for user \"app\"")
    assert AR.auth_failure?(rails_wrapped(pg))
    # 6.1/7.x raise NoDatabaseError when the message contains the database name ("app" in "app"):
    nodb = begin
      begin
        raise pg
      rescue PG::Error
        raise ActiveRecord::NoDatabaseError
      end
    rescue ActiveRecord::NoDatabaseError => e
      e
    end
    assert AR.auth_failure?(nodb)
  end

  def test_other_errors_are_not_auth_failures
    refute AR.auth_failure?(auth_error(1049)) # unknown database
    refute AR.auth_failure?(auth_error(2003)) # can't connect
    refute AR.auth_failure?(rails_wrapped(PG::ConnectionBad.new("could not connect to server: Connection refused")))
    refute AR.auth_failure?(RuntimeError.new("password authentication failed")) # not a driver error
  end

  # --- retry policy -----------------------------------------------------------------------------------

  def test_auth_failure_with_url_uses_refresh_then_pending_and_remembers_it_until_the_file_changes
    pending = "new-pw"
    with_endpoint(rotation: true, pending: pending) do |endpoint, settings|
      tried = []
      db = db_accepting(pending, tried)
      client = AR.connect({ host: "h" }, settings, :mysql2, &db)
      assert_equal :connected, client
      assert_equal ["old-pw", "new-pw"], tried
      paths = endpoint.request_list.map { |m, p, _| "#{m} #{p}" }
      assert_equal ["POST /v1/secrets/db/refresh", "GET /v1/secrets/db?stage=AWSPENDING"], paths

      # Next connection: the remembered pending value first, no HTTP call.
      tried.clear
      AR.connect({ host: "h" }, settings, :mysql2, &db)
      assert_equal ["new-pw"], tried
      assert_empty endpoint.request_list

      # finishSecret: the file changes; the memory is dropped and the file is used again.
      publish(@file, "username" => "app", "password" => "new-pw-2")
      tried.clear
      AR.connect({ host: "h" }, settings, :mysql2, &db_accepting("new-pw-2", tried))
      assert_equal ["new-pw-2"], tried
    end
    assert_no_secret @log.string, "old-pw", "new-pw"
    assert_includes @log.string, "AWSPENDING"
  end

  def test_refresh_that_changes_the_file_is_followed_by_a_retry_with_the_new_file
    with_endpoint(rotation: false, pending: nil, on_refresh: -> { publish(@file, "username" => "app", "password" => "rotated") }) do |_e, settings|
      tried = []
      AR.connect({}, settings, :mysql2, &db_accepting("rotated", tried))
      assert_equal ["old-pw", "rotated"], tried
    end
  end

  def test_gives_up_after_three_attempts_within_three_seconds_and_raises_the_original_error
    first = nil
    n = 0
    with_endpoint(rotation: true, pending: "also-wrong") do |_e, settings|
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raised = assert_raises(ActiveRecord::ConnectionNotEstablished) do
        AR.connect({}, settings, :mysql2) do |_cfg|
          n += 1
          err = rails_wrapped(auth_error)
          first ||= err
          raise err
        end
      end
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      assert_same first, raised, "must re-raise the original error"
      assert_operator n, :<=, AR::MAX_ATTEMPTS
      assert_operator n, :>=, 2, "the pending value was never tried"
      assert_operator elapsed, :<, 3.0
    end
    assert_includes @log.string, "giving up"
  end

  def test_without_url_a_file_updated_during_the_backoff_is_picked_up
    settings = AR::Settings.from(file: @file)
    tried = []
    Thread.new { sleep 0.1; publish(@file, "username" => "app", "password" => "late") }
    AR.connect({}, settings, :mysql2, &db_accepting("late", tried))
    assert_equal ["old-pw", "late"], tried
  end

  def test_non_auth_errors_are_raised_at_once_without_retry
    n = 0
    e = assert_raises(ActiveRecord::ConnectionNotEstablished) do
      AR.connect({}, AR::Settings.from(file: @file), :mysql2) { n += 1; raise rails_wrapped(auth_error(2003)) }
    end
    assert_equal 1, n
    assert_equal 2003, e.cause.error_number
  end

  # --- the deadline ---------------------------------------------------------------------------------------

  # One deadline (RETRY_BUDGET after the first refused login) bounds every call to the sidecar: one that
  # never answers costs the time left, not its default read timeout (3 s) per call.
  def test_a_sidecar_that_never_answers_cannot_stretch_the_budget
    server = TCPServer.new("127.0.0.1", 0)
    acceptor = Thread.new do
      loop do
        Thread.new(server.accept) do |sock|
          sleep 10 # never answers
        ensure
          sock.close
        end
      end
    end
    settings = AR::Settings.from(file: @file, url: "http://127.0.0.1:#{server.addr[1]}/v1/secrets/db")
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_raises(ActiveRecord::ConnectionNotEstablished) do
      AR.connect({}, settings, :mysql2) { |_cfg| raise rails_wrapped(auth_error) }
    end
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    assert_operator elapsed, :>=, AR::RETRY_BUDGET - 0.1
    assert_operator elapsed, :<, AR::RETRY_BUDGET + 0.4, "the error took #{elapsed.round(2)} s"
    assert_includes @log.string, "refresh failed"
  ensure
    acceptor&.kill
    server&.close
  end

  # --- instrumentation ---------------------------------------------------------------------------------

  def test_events_report_refresh_pending_credentials_and_giving_up_without_a_secret
    events = []
    sub = ActiveSupport::Notifications.subscribe(/\.secrets_sidecar\z/) do |name, _start, _finish, _id, payload|
      events << [name, payload.dup]
    end
    with_endpoint(rotation: true, pending: "pending-pw") do |_endpoint, settings|
      2.times { AR.connect({}, settings, :mysql2, &db_accepting("pending-pw", [])) }
      publish(@file, "username" => "app", "password" => "file-pw-2")
      assert_raises(ActiveRecord::ConnectionNotEstablished) do
        AR.connect({}, settings, :postgresql) { |_cfg| raise rails_wrapped(auth_error) }
      end
      url = settings.url
      file = settings.file
      assert_equal ["refresh.secrets_sidecar", { file: file, url: url, adapter: "mysql2", outcome: "rotation_in_progress" }],
                   events[0]
      assert_equal ["pending_credentials.secrets_sidecar", { file: file, adapter: "mysql2", username: "app", remembered: false }],
                   events[1]
      assert_equal ["pending_credentials.secrets_sidecar", { file: file, adapter: "mysql2", username: "app", remembered: true }],
                   events[2]
      gave_up = events.last
      assert_equal "gave_up.secrets_sidecar", gave_up[0]
      assert_equal %i[adapter attempts error_class file seconds], gave_up[1].keys.sort
      assert_equal ["postgresql", 2, "ActiveRecord::ConnectionNotEstablished", file],
                   gave_up[1].values_at(:adapter, :attempts, :error_class, :file)
      assert_operator gave_up[1][:seconds], :>, 0
      assert_equal %w[refresh.secrets_sidecar], events[3..-2].map(&:first).uniq
    end
    # Every secret of the scenario, and the token file's content, is absent from every payload.
    assert_no_secret events.inspect, "old-pw", "pending-pw", "file-pw-2", "tok"
  ensure
    ActiveSupport::Notifications.unsubscribe(sub) if sub
  end

  private

  # A "database" block for AR.connect: accepts one password, records every password tried.
  def db_accepting(password, tried)
    lambda do |cfg|
      tried << cfg[:password]
      raise rails_wrapped(auth_error) unless cfg[:password] == password

      :connected
    end
  end

  def with_endpoint(rotation:, pending:, on_refresh: nil)
    token = File.join(@dir, ".token")
    File.write(token, "tok")
    endpoint = StubEndpoint.new do |method, path, _h|
      if method == "POST"
        on_refresh&.call
        [200, JSON.generate(name: "db", version_id: "v1", changed: !on_refresh.nil?, fetched: true,
                            rotation_in_progress: rotation, pending_version_id: rotation ? "v2" : nil)]
      elsif path.end_with?("?stage=AWSPENDING") && pending
        [200, JSON.generate(username: "app", password: pending)]
      elsif path.end_with?("?stage=AWSPENDING")
        [404, "{}"]
      else
        [200, File.read(@file)]
      end
    end
    yield endpoint, AR::Settings.from(file: @file, url: endpoint.url, token_file: token)
  ensure
    endpoint&.close
  end

  def with_driver(impl)
    original = Mysql2::Client.method(:new)
    Mysql2::Client.define_singleton_method(:new) { |opts| impl.call(opts) }
    yield
  ensure
    Mysql2::Client.singleton_class.send(:remove_method, :new)
    raise "Mysql2::Client.new not restored" unless Mysql2::Client.method(:new) == original
  end
end
