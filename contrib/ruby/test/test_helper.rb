# frozen_string_literal: true

# Shared helpers for the contrib/ruby unit tests (minitest, stdlib only besides Debian's activerecord).
require "minitest/autorun"
require "tmpdir"
require "fileutils"
require "json"
require "logger"
require "stringio"
require_relative "../lib/secrets_sidecar"

module SecretsSidecarTestHelpers
  PASSWORD = "s3cr3t-Pa55word-Never-Shown"

  def with_tmpdir
    Dir.mktmpdir("secrets-sidecar-rb-") { |d| yield d }
  end

  # Publishes like the sidecar: temp file in the same dir, then rename over the target (new inode).
  def publish(path, hash_or_text)
    text = hash_or_text.is_a?(String) ? hash_or_text : JSON.generate(hash_or_text)
    tmp = "#{path}.tmp-#{rand(1 << 30)}"
    File.write(tmp, text)
    File.rename(tmp, path)
    path
  end

  def assert_no_secret(text, *secrets)
    secrets = [PASSWORD] if secrets.empty?
    secrets.each do |s|
      refute_includes text.to_s, s, "a secret leaked into: #{text.to_s[0, 200]}..."
    end
  end
end

# A minimal HTTP/1.1 responder on 127.0.0.1:<free> standing in for the sidecar's endpoint in unit tests of
# the Ruby client (the end-to-end test in tests/db/rails_rotation.rs uses the real sidecar). The handler gets
# (method, path, headers) and returns [status, body].
class StubEndpoint
  require "socket"
  attr_reader :requests

  def initialize(&handler)
    @handler = handler
    @server = TCPServer.new("127.0.0.1", 0)
    @requests = Queue.new
    @thread = Thread.new { serve }
  end

  def url(name = "db")
    "http://127.0.0.1:#{@server.addr[1]}/v1/secrets/#{name}"
  end

  def request_list
    list = []
    list << @requests.pop until @requests.empty?
    list
  end

  def close
    @thread.kill
    @server.close
  end

  private

  def serve
    loop do
      sock = @server.accept
      begin
        line = sock.gets or next
        method, path, = line.split(" ")
        headers = {}
        while (h = sock.gets) && h != "\r\n"
          k, v = h.split(":", 2)
          headers[k.strip.downcase] = v.strip
        end
        len = headers["content-length"].to_i
        sock.read(len) if len.positive?
        @requests << [method, path, headers]
        status, body = @handler.call(method, path, headers)
        reason = { 200 => "OK", 401 => "Unauthorized", 404 => "Not Found", 500 => "Internal Server Error" }[status]
        sock.write("HTTP/1.1 #{status} #{reason}\r\nContent-Type: application/json\r\n" \
                   "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
      ensure
        sock.close
      end
    end
  end
end
