# frozen_string_literal: true

require "rails/railtie"

module SecretsSidecar
  # Installs the ActiveRecord hook in a Rails app: a Gemfile line (`gem "secrets_sidecar"`) is all it takes,
  # as Bundler.require loads secrets_sidecar.rb after `require "rails"`, and that file loads this one.
  #
  #   config.secrets_sidecar.install_hook = false   # e.g. in development, to use database.yml's own password
  #   config.secrets_sidecar.logger = Logger.new($stderr)   # where the hook's warnings go (default: ActiveRecord's logger)
  #
  # The hook is required from `ActiveSupport.on_load(:active_record)`, so ActiveRecord is not loaded any
  # earlier than the app would load it, and an app without ActiveRecord is left alone.
  class Railtie < ::Rails::Railtie
    config.secrets_sidecar = ActiveSupport::OrderedOptions.new
    config.secrets_sidecar.install_hook = true
    config.secrets_sidecar.logger = nil

    initializer "secrets_sidecar.active_record" do |app|
      options = app.config.secrets_sidecar
      if options.install_hook
        ActiveSupport.on_load(:active_record) do
          require_relative "active_record"
          SecretsSidecar::ActiveRecord.logger = options.logger if options.logger
        end
      end
    end
  end
end
