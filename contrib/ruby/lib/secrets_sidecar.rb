# frozen_string_literal: true

# secrets_sidecar: the Ruby side of secrets-sidecar, as a gem (contrib/ruby/secrets_sidecar.gemspec).
#
# This file owns two things, both standard library only (json, net/http, etc):
#
# * CredentialsFile — reads the JSON file the sidecar publishes (DIR/NAME.json) and re-parses it only when
#   the file's identity (device, inode, mtime, ctime, size) changed, so the common case is one stat(2). The
#   sidecar replaces the file by rename, so every new version is a new inode.
# * Client — the sidecar's localhost endpoint: POST .../refresh and GET ...?stage=AWSPENDING, with the token
#   read from the token file on every call (the sidecar generates a new one when it restarts). Every call
#   takes a `timeout:` that bounds it whole, so a caller with a deadline (the ActiveRecord hook) can derive
#   each call's time from what is left of it.
#
# Secrets are toxic: no password or token appears in an exception message, a log line or #inspect. JSON
# parser messages are never passed on either, because they quote the input.
#
# The ActiveRecord hook lives in secrets_sidecar/active_record.rb and uses only the API below. Inside a Rails
# app (Rails::Railtie defined when the gem is required, as Bundler.require does after `require "rails"`),
# requiring this file also loads the Railtie, which installs the hook when ActiveRecord loads.

require "json"
require "net/http"
require "uri"
require "etc"
require_relative "secrets_sidecar/version"

module SecretsSidecar
  TOKEN_HEADER = "X-Secrets-Sidecar-Token"

  class Error < StandardError; end

  # The credentials file is missing or unreadable. The message says what to check.
  class FileError < Error
    attr_reader :path, :errno

    def initialize(message, path: nil, errno: nil)
      super(message)
      @path = path
      @errno = errno
    end
  end

  # The file was read but does not hold what we need (not JSON, not an object, no password).
  class FormatError < Error; end

  # The endpoint could not be reached or answered something unexpected.
  class EndpointError < Error
    attr_reader :status

    def initialize(message, status: nil)
      super(message)
      @status = status
    end
  end

  # One set of database credentials. Holds the password, so #inspect and #to_s never show it.
  class Credentials
    attr_reader :username, :password, :host, :port, :dbname, :source

    # source: :file, :pending or :endpoint — where these credentials came from (used to remember that the
    # AWSPENDING value worked).
    def initialize(username:, password:, host: nil, port: nil, dbname: nil, source: :file)
      @username = username
      @password = password
      @host = host
      @port = port
      @dbname = dbname
      @source = source
      freeze
    end

    # Builds credentials from a secret's JSON object (RDS and Lambda rotation secrets: username, password,
    # and optionally host, port, dbname). `origin` names where it came from, for error messages only.
    def self.from_hash(hash, origin:, source: :file)
      unless hash.is_a?(Hash)
        raise FormatError, "secrets_sidecar: #{origin} must hold a JSON object, got #{json_type(hash)}"
      end
      password = hash["password"]
      unless password.is_a?(String) && !password.empty?
        raise FormatError, "secrets_sidecar: #{origin} has no non-empty string \"password\" key " \
                           "(keys present: #{hash.keys.sort.join(', ')})"
      end
      username = hash["username"]
      if !username.nil? && !username.is_a?(String)
        raise FormatError, "secrets_sidecar: #{origin}: \"username\" must be a string"
      end
      port = hash["port"]
      port = Integer(port, exception: false) if port.is_a?(String)
      port = nil unless port.is_a?(Integer)
      new(username: username, password: password, host: string_or_nil(hash["host"]), port: port,
          dbname: string_or_nil(hash["dbname"]), source: source)
    end

    def self.parse_json(text, origin:, source: :file)
      from_hash(JSON.parse(text), origin: origin, source: source)
    rescue JSON::ParserError
      # Deliberately not the parser's message, and no `cause`: the parser error quotes the text, which may
      # hold the password, and full_message/loggers print the cause chain.
      raise FormatError, "secrets_sidecar: #{origin} is not valid JSON (#{text.bytesize} bytes)", cause: nil
    end

    def self.string_or_nil(value)
      value.is_a?(String) && !value.empty? ? value : nil
    end

    def self.json_type(value)
      case value
      when Array then "an array"
      when String then "a string"
      when nil then "null"
      else value.class.name.downcase
      end
    end
    private_class_method :string_or_nil, :json_type

    def with_source(source)
      self.class.new(username: username, password: password, host: host, port: port, dbname: dbname,
                     source: source)
    end

    # An RDS IAM auth token rather than a password: what the sidecar publishes for an `rds-iam://` entry,
    # a presigned `HOST:PORT/?Action=connect&DBUser=…&X-Amz-…&X-Amz-Signature=…`. It must only ever be
    # sent over TLS to a verified server (see SecretsSidecar::ActiveRecord.apply).
    IAM_TOKEN = %r{\A[^/\s]+:\d+/\?Action=connect&DBUser=[^&]*&\S*X-Amz-Signature=[0-9a-f]+}.freeze

    def iam_token?
      IAM_TOKEN.match?(password)
    end

    # Same login (source ignored): used to tell whether a re-read brought anything new to try.
    def same_login?(other)
      other.is_a?(Credentials) && other.username == username && other.password == password &&
        other.host == host && other.port == port && other.dbname == dbname
    end

    def inspect
      "#<#{self.class.name} username=#{username.inspect} password=[REDACTED] host=#{host.inspect} " \
        "port=#{port.inspect} dbname=#{dbname.inspect} source=#{source}>"
    end
    alias to_s inspect

    # Pretty-printers and YAML dumps go through these; keep the password out of them too.
    def pretty_print(pp)
      pp.text(inspect)
    end

    def encode_with(coder)
      coder.scalar = inspect
    end

    def marshal_dump
      raise TypeError, "#{self.class.name} holds a password and cannot be marshalled"
    end
  end

  # Builds the messages for a credentials file that cannot be read. Public so tests (and other clients)
  # can use it without having to reproduce every errno.
  module Diagnostics
    module_function

    def unreadable_message(path, error, process: process_identity)
      reason =
        case error
        when Errno::ENOENT then "does not exist (ENOENT)"
        when Errno::EACCES then "permission denied (EACCES)"
        when Errno::ENOTDIR then "a path component is not a directory (ENOTDIR)"
        when Errno::EISDIR then "is a directory, not a file (EISDIR)"
        else "cannot be read (#{error.class.name.split('::').last})"
        end
      lines = ["secrets_sidecar: credentials file #{path} #{reason}."]
      file = describe_path(path)
      lines << "  file: #{file}" if file
      dir = File.dirname(path)
      dir_desc = describe_path(dir)
      lines << "  directory #{dir}: #{dir_desc || 'cannot be stat-ed (missing, or a parent is not searchable)'}"
      lines << "  this process: #{process}"
      lines.concat(hints(error, path))
      lines.join("\n")
    end

    def process_identity
      uid = Process.uid
      euid = Process.euid
      gid = Process.gid
      groups = (Process.groups rescue [])
      s = +"uid #{uid}#{name_of_user(uid)}"
      s << " (euid #{euid})" if euid != uid
      s << ", gid #{gid}#{name_of_group(gid)}"
      s << ", groups #{groups.uniq.sort.join(',')}" unless groups.empty?
      s
    end

    def describe_path(path)
      st = File.stat(path)
      "owner uid #{st.uid}#{name_of_user(st.uid)}, group gid #{st.gid}#{name_of_group(st.gid)}, " \
        "mode #{format('%04o', st.mode & 0o7777)}#{st.directory? ? ' (directory)' : ''}"
    rescue SystemCallError
      nil
    end

    def hints(error, path)
      case error
      when Errno::ENOENT
        ["  check: is the sidecar running and has it published this secret (GET /healthz answers 200 once " \
         "every file was written)? Is the shared volume mounted at #{File.dirname(path)} in this container " \
         "(ECS mountPoints/volumesFrom), and does the file name match the sidecar's --secret NAME " \
         "(NAME.json)?"]
      when Errno::EACCES
        ["  check: the sidecar writes the file with --file-mode (default 0440) and --file-uid/--file-gid " \
         "(default: the uid/gid the sidecar container runs as, its ECS `user`). Run the app with the file's " \
         "uid, or give both containers a common gid (ECS `user: \"UID:GID\"`) and keep --file-mode " \
         "group-readable; the directory must be searchable (x) by this process too."]
      else
        []
      end
    end

    def name_of_user(uid)
      name = Etc.getpwuid(uid)&.name
      name ? " (#{name})" : ""
    rescue ArgumentError, SystemCallError
      ""
    end

    def name_of_group(gid)
      name = Etc.getgrgid(gid)&.name
      name ? " (#{name})" : ""
    rescue ArgumentError, SystemCallError
      ""
    end
  end

  # The credentials file, re-parsed only when its identity changes. Thread-safe.
  class CredentialsFile
    attr_reader :path

    def initialize(path)
      @path = path.to_s
      @mutex = Mutex.new
      @identity = nil
      @credentials = nil
      @parses = 0
    end

    # Number of times the file was actually read and parsed (tests and diagnostics).
    attr_reader :parses

    # The current credentials. One stat when nothing changed.
    def read
      st = stat_or_raise(@path)
      id = self.class.identity(st)
      @mutex.synchronize do
        return @credentials if @credentials && id == @identity

        load_locked
      end
    end

    # The identity of the version last parsed (nil before the first read).
    def identity
      @mutex.synchronize { @identity }
    end

    # Forgets the cached value, so the next read parses the file again.
    def invalidate
      @mutex.synchronize do
        @identity = nil
        @credentials = nil
      end
    end

    def inspect
      "#<#{self.class.name} path=#{@path.inspect} parses=#{@parses}>"
    end
    alias to_s inspect

    def self.identity(st)
      [st.dev, st.ino, st.mtime.to_r, st.ctime.to_r, st.size].freeze
    end

    private

    # Opens, then fstats the open descriptor, so the identity cached is that of the content read even
    # when the sidecar renames a new version in between.
    def load_locked
      text, st = File.open(@path, "rb") { |f| [f.read, f.stat] }
      creds = Credentials.parse_json(text, origin: "credentials file #{@path}", source: :file)
      @parses += 1
      @identity = self.class.identity(st)
      @credentials = creds
    rescue SystemCallError => e
      raise FileError.new(Diagnostics.unreadable_message(@path, e), path: @path, errno: e.class)
    end

    def stat_or_raise(path)
      File.stat(path)
    rescue SystemCallError => e
      raise FileError.new(Diagnostics.unreadable_message(path, e), path: path, errno: e.class)
    end
  end

  # Client for the sidecar's endpoint for one secret, e.g. url "http://127.0.0.1:2773/v1/secrets/db".
  #
  # Each call takes an optional `timeout:` in seconds: the longest the whole call may take (connect, send,
  # answer). Without it the defaults below apply to each step. A call that runs out of time raises
  # EndpointError, like one that cannot connect.
  class Client
    DEFAULT_OPEN_TIMEOUT = 0.5
    DEFAULT_READ_TIMEOUT = 3.0

    attr_reader :url, :token_file

    def initialize(url, token_file: nil, open_timeout: DEFAULT_OPEN_TIMEOUT, read_timeout: DEFAULT_READ_TIMEOUT)
      @url = URI(url.to_s.sub(%r{/+\z}, ""))
      unless @url.is_a?(URI::HTTP) && @url.host
        raise ArgumentError, "secrets_sidecar: url must be an http URL like http://127.0.0.1:2773/v1/secrets/NAME"
      end
      @token_file = token_file&.to_s
      @open_timeout = open_timeout
      @read_timeout = read_timeout
    end

    # POST .../refresh: asks the sidecar to fetch now (it coalesces calls and honours --min-refresh-gap).
    # Returns the metadata Hash (string keys: "version_id", "changed", "fetched", "rotation_in_progress",
    # "pending_version_id").
    def refresh(timeout: nil)
      req = Net::HTTP::Post.new(path_for("/refresh"))
      # An empty body; naming its type keeps Ruby 3.3's net/http from warning on every call.
      req["Content-Type"] = "text/plain"
      res = request(req, timeout)
      expect_ok!(res, "POST refresh")
      parse_object(res.body, "refresh answer")
    end

    # GET ...?stage=AWSPENDING: the pending credentials while a rotation is in progress, nil otherwise (404).
    def pending(timeout: nil)
      res = request(Net::HTTP::Get.new(path_for("", "stage=AWSPENDING")), timeout)
      return nil if res.code == "404"

      expect_ok!(res, "GET ?stage=AWSPENDING")
      Credentials.parse_json(res.body, origin: "the sidecar's AWSPENDING value", source: :pending)
    end

    # GET ...: the current value, as in the file.
    def current(timeout: nil)
      res = request(Net::HTTP::Get.new(path_for("")), timeout)
      expect_ok!(res, "GET")
      Credentials.parse_json(res.body, origin: "the sidecar's current value", source: :endpoint)
    end

    def inspect
      "#<#{self.class.name} url=#{@url.to_s.inspect} token_file=#{@token_file.inspect}>"
    end
    alias to_s inspect

    private

    def path_for(suffix, query = nil)
      p = "#{@url.path}#{suffix}"
      query ? "#{p}?#{query}" : p
    end

    def request(req, timeout)
      token = read_token
      req[TOKEN_HEADER] = token if token
      req["Accept"] = "application/json"
      deadline = timeout && (monotonic + timeout)
      # No proxy: the sidecar is on this host's loopback, whatever http_proxy says.
      http = Net::HTTP.new(@url.host, @url.port, nil)
      http.open_timeout = deadline ? [@open_timeout, left(deadline)].min : @open_timeout
      # Net::HTTP sends an idempotent request (GET) a second time after a read timeout: twice the wait.
      http.max_retries = 0
      http.start do |conn|
        step = deadline ? [@read_timeout, left(deadline)].min : @read_timeout
        conn.read_timeout = step
        conn.write_timeout = step
        conn.request(req)
      end
    rescue SystemCallError, IOError, Timeout::Error, SocketError, Net::ProtocolError => e
      raise EndpointError, "secrets_sidecar: cannot reach the sidecar at #{@url.host}:#{@url.port} " \
                           "(#{e.class.name}); is it running, and is --listen the address in `url`?"
    end

    # Seconds until `deadline`; a little above zero when it has passed, as Net::HTTP takes no zero timeout.
    def left(deadline)
      [deadline - monotonic, 0.001].max
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def read_token
      return nil unless @token_file

      File.read(@token_file).strip
    rescue SystemCallError => e
      raise FileError.new(Diagnostics.unreadable_message(@token_file, e), path: @token_file, errno: e.class)
    end

    def expect_ok!(res, what)
      return if res.code == "200"

      hint = res.code == "401" || res.code == "403" ? " (token rejected: check token_file)" : ""
      raise EndpointError.new("secrets_sidecar: #{what} #{@url.path} answered HTTP #{res.code}#{hint}",
                              status: res.code.to_i)
    end

    def parse_object(body, what)
      obj = JSON.parse(body.to_s)
      raise EndpointError, "secrets_sidecar: #{what} is not a JSON object" unless obj.is_a?(Hash)

      obj
    rescue JSON::ParserError
      raise EndpointError, "secrets_sidecar: #{what} is not valid JSON", cause: nil
    end
  end
end

require_relative "secrets_sidecar/railtie" if defined?(::Rails::Railtie)
