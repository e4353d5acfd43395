# frozen_string_literal: true

module SecretsSidecar
  # The gem's version (secrets_sidecar.gemspec reads it from here).
  VERSION = "0.2.0"
end
