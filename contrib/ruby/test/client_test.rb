# frozen_string_literal: true

require_relative "test_helper"

class ClientTest < Minitest::Test
  include SecretsSidecarTestHelpers

  def setup
    @token_dir = Dir.mktmpdir("secrets-sidecar-rb-")
    @token_file = File.join(@token_dir, ".token")
    File.write(@token_file, "tok123\n")
    @pending = nil
    @endpoint = StubEndpoint.new do |method, path, headers|
      next [401, '{"error":"unauthorized"}'] unless headers["x-secrets-sidecar-token"] == "tok123"

      case [method, path]
      when ["POST", "/v1/secrets/db/refresh"]
        [200, JSON.generate(name: "db", version_id: "v2", changed: false, fetched: true,
                            rotation_in_progress: !@pending.nil?, pending_version_id: @pending && "v3")]
      when ["GET", "/v1/secrets/db?stage=AWSPENDING"]
        @pending ? [200, JSON.generate(username: "app", password: @pending)] : [404, '{"error":"not found"}']
      when ["GET", "/v1/secrets/db"]
        [200, JSON.generate(username: "app", password: "current-pw")]
      else
        [404, '{"error":"not found"}']
      end
    end
    @client = SecretsSidecar::Client.new(@endpoint.url, token_file: @token_file)
  end

  def teardown
    @endpoint.close
    FileUtils.remove_entry(@token_dir)
  end

  def test_refresh_posts_with_the_token_and_returns_metadata
    answer = @client.refresh
    assert_equal "v2", answer["version_id"]
    assert_equal false, answer["rotation_in_progress"]
    method, path, headers = @endpoint.request_list.last
    assert_equal ["POST", "/v1/secrets/db/refresh"], [method, path]
    assert_equal "tok123", headers["x-secrets-sidecar-token"]
  end

  def test_pending_is_nil_on_404_and_credentials_during_rotation
    assert_nil @client.pending
    @pending = PASSWORD
    p = @client.pending
    assert_equal PASSWORD, p.password
    assert_equal :pending, p.source
    assert_equal true, @client.refresh["rotation_in_progress"]
  end

  def test_token_is_re_read_on_every_call
    File.write(@token_file, "wrong")
    err = assert_raises(SecretsSidecar::EndpointError) { @client.refresh }
    assert_equal 401, err.status
    assert_includes err.message, "token rejected"
    refute_includes err.message, "wrong"
    File.write(@token_file, "tok123")
    assert_equal "v2", @client.refresh["version_id"]
  end

  def test_unreachable_sidecar_is_an_endpoint_error_naming_the_address
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    c = SecretsSidecar::Client.new("http://127.0.0.1:#{port}/v1/secrets/db")
    err = assert_raises(SecretsSidecar::EndpointError) { c.refresh }
    assert_includes err.message, "127.0.0.1:#{port}"
  end

  def test_missing_token_file_names_it
    c = SecretsSidecar::Client.new(@endpoint.url, token_file: File.join(@token_dir, "nope"))
    err = assert_raises(SecretsSidecar::FileError) { c.refresh }
    assert_includes err.message, File.join(@token_dir, "nope")
  end

  def test_rejects_non_http_url
    assert_raises(ArgumentError) { SecretsSidecar::Client.new("/secrets/db.json") }
  end

  # A timeout bounds the whole call, and a GET that runs out of time is not sent again (Net::HTTP repeats an
  # idempotent request once after a read timeout by default: twice the wait).
  def test_a_call_with_a_timeout_ends_by_it_however_slow_the_sidecar_and_is_sent_once
    server = TCPServer.new("127.0.0.1", 0)
    received = Queue.new
    acceptor = Thread.new do
      loop do
        sock = server.accept
        Thread.new(sock) do |s|
          line = s.gets
          nil while (h = s.gets) && h != "\r\n"
          received << line.split(" ").first(2)
          sleep 5 # never answers in time
        ensure
          s.close
        end
      end
    end
    c = SecretsSidecar::Client.new("http://127.0.0.1:#{server.addr[1]}/v1/secrets/db")
    %i[refresh pending current].each do |call|
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      err = assert_raises(SecretsSidecar::EndpointError) { c.public_send(call, timeout: 0.3) }
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      assert_includes err.message, "Net::ReadTimeout"
      assert_operator elapsed, :>=, 0.3
      assert_operator elapsed, :<, 0.6, "#{call} took #{elapsed.round(2)} s with a 0.3 s timeout"
    end
    sleep 0.2
    seen = []
    seen << received.pop until received.empty?
    assert_equal [["POST", "/v1/secrets/db/refresh"], ["GET", "/v1/secrets/db?stage=AWSPENDING"], ["GET", "/v1/secrets/db"]],
                 seen, "each call sent exactly once"
  ensure
    acceptor&.kill
    server&.close
  end
end
