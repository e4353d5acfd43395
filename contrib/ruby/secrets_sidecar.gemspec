# frozen_string_literal: true

# The Ruby side of secrets-sidecar as a gem. Standard library only at runtime; the ActiveRecord hook and the
# Railtie load only inside an app that has ActiveRecord / Rails, so neither is a dependency. Install from
# this directory (`gem "secrets_sidecar", path: …`) or from the repository (`git:` + `glob:`): see
# docs/rails.md. `gem build secrets_sidecar.gemspec` builds it; CI builds, installs and boots it in a Rails app.
require_relative "lib/secrets_sidecar/version"

Gem::Specification.new do |spec|
  spec.name = "secrets_sidecar"
  spec.version = SecretsSidecar::VERSION
  spec.summary = "Database credentials from the secrets-sidecar daemon, re-read on every ActiveRecord connection"
  spec.description = <<~TEXT
    Reads the credentials file secrets-sidecar publishes (AWS Secrets Manager rotations, RDS IAM auth tokens) and
    talks to its localhost endpoint. In a Rails app a Railtie installs an ActiveRecord hook (mysql2, postgresql,
    trilogy; Rails 6.1 to 8) so that every new connection logs in with the current password, recovers from the
    rotation window with the AWSPENDING value, and sends an IAM token only to a fully verified server.
  TEXT
  spec.authors = ["secrets-sidecar contributors"]
  spec.license = "Apache-2.0"
  spec.required_ruby_version = ">= 3.1"
  spec.files = Dir.chdir(__dir__) do
    Dir["lib/**/*.rb", "lib/**/*.cnf", "README.md", "secrets_sidecar.gemspec"].sort
  end
  spec.require_paths = ["lib"]
end
