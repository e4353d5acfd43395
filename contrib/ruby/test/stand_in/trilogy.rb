# frozen_string_literal: true

# A stand-in for the `trilogy` driver gem, which no Debian release packages: just the constants and error
# classes ActiveRecord's TrilogyAdapter (7.1+) touches when it loads and when a login fails, named and
# shaped as in trilogy 2.9 (`Trilogy::Error` is a module every driver error includes; `error_code` is the
# server's error number). `Trilogy.new` is replaced per test, as the other tests replace `Mysql2::Client.new`.
# It lets the unit tests run the real adapter's new_client, translate_connect_error, reconnect and
# ActiveRecord's reconnect! retry loop through the hook; no trilogy login to a server is exercised here.
class Trilogy
  module Error; end

  class BaseError < StandardError
    include Error
    attr_reader :error_code

    def initialize(message = nil, error_code = nil)
      super(message)
      @error_code = error_code
    end
  end

  class ProtocolError < BaseError; end
  class DatabaseError < ProtocolError; end
  class ConnectionError < BaseError; end
  class TimeoutError < BaseError; end
  class ConnectionClosed < BaseError; end
  class EOFError < ConnectionClosed; end

  SSL_DISABLED = 0
  SSL_VERIFY_CA = 1
  SSL_VERIFY_IDENTITY = 2
  SSL_PREFERRED_NOVERIFY = 3
  SSL_REQUIRED_NOVERIFY = 4
  QUERY_FLAGS_LOCAL_TIMEZONE = 8
  SET_SERVER_MULTI_STATEMENTS_ON = 0
  SET_SERVER_MULTI_STATEMENTS_OFF = 1

  def self.new(_options)
    raise ConnectionError, "the trilogy stand-in cannot connect: replace Trilogy.new in the test"
  end
end
