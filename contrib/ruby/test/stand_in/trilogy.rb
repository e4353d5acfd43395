# frozen_string_literal: true

# A stand-in for the `trilogy` driver gem, which no Debian release packages: the constants and error classes
# ActiveRecord's TrilogyAdapter (7.1+) and the hook touch, with the names, values and ancestry of trilogy
# 2.9.0 (contrib/ruby/lib/trilogy/error.rb and version.rb; the constants from ext/trilogy-ruby/cext.c, whose
# values are inc/trilogy/socket.h's enums and trilogy-ruby.h's flags). A login refused with 1045 arrives as
# `ProtocolError.from_code`, i.e. a BaseConnectionError whose `error_code` is 1045. `Trilogy.new` is replaced
# per test, as the other tests replace `Mysql2::Client.new`. It lets the unit tests run the real adapter's
# new_client, translate_connect_error, reconnect and ActiveRecord's reconnect! retry loop through the hook;
# no trilogy login to a server is exercised here.
class Trilogy
  VERSION = "2.9.0"

  module Error
    attr_reader :error_code
  end

  module ConnectionError
    include Error
  end

  class BaseError < StandardError
    include Error

    def initialize(error_message = nil, error_code = nil)
      message = error_code ? "#{error_code}: #{error_message}" : error_message
      super(message)
      @error_code = error_code
    end
  end

  class BaseConnectionError < BaseError
    include ConnectionError
  end

  class ClientError < BaseError; end
  class QueryError < ClientError; end
  class CastError < ClientError; end
  class TimeoutError < BaseConnectionError; end
  module DatabaseError; end

  class ProtocolError < BaseError
    include DatabaseError

    ERROR_CODES = { 1044 => BaseConnectionError, 1045 => BaseConnectionError, 1205 => TimeoutError }.freeze

    def self.from_code(message, code)
      ERROR_CODES.fetch(code, self).new(message, code)
    end
  end

  class SSLError < BaseError
    include ConnectionError
  end

  class ConnectionClosed < IOError
    include ConnectionError
  end

  class EOFError < BaseConnectionError; end
  class AuthPluginError < BaseConnectionError; end

  TLS_VERSION_10 = 1
  TLS_VERSION_11 = 2
  TLS_VERSION_12 = 3
  TLS_VERSION_13 = 4

  SSL_DISABLED = 0
  SSL_VERIFY_IDENTITY = 1
  SSL_VERIFY_CA = 2
  SSL_REQUIRED_NOVERIFY = 3
  SSL_PREFERRED_NOVERIFY = 4

  QUERY_FLAGS_NONE = 0
  QUERY_FLAGS_CAST = 1
  QUERY_FLAGS_CAST_BOOLEANS = 2
  QUERY_FLAGS_LOCAL_TIMEZONE = 4
  QUERY_FLAGS_FLATTEN_ROWS = 8
  QUERY_FLAGS_DEFAULT = QUERY_FLAGS_CAST

  SET_SERVER_MULTI_STATEMENTS_ON = 0
  SET_SERVER_MULTI_STATEMENTS_OFF = 1

  def self.new(_options)
    raise BaseConnectionError, "the trilogy stand-in cannot connect: replace Trilogy.new in the test"
  end
end
