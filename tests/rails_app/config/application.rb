# frozen_string_literal: true

require_relative "boot"
require "rails"
require "active_record/railtie"
# What Bundler.require(*Rails.groups) does for the Gemfile line `gem "secrets_sidecar"`.
require "secrets_sidecar"

module GemCheck
  class Application < Rails::Application
    config.load_defaults Rails::VERSION::STRING.to_f
    config.eager_load = false
    config.logger = Logger.new($stderr, level: Logger::WARN)
    # The Railtie's switch (default true); the test's negative control turns it off.
    config.secrets_sidecar.install_hook = ENV.fetch("GEM_CHECK_INSTALL_HOOK", "true") == "true"
    # Not a secret: this app serves no request and signs nothing.
    config.secret_key_base = "gem-check-#{'0' * 64}"
  end
end
