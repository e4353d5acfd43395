# frozen_string_literal: true

# Run by `bin/rails runner script/check.rb`: connects through both databases and prints what the test checks.
class Secondary < ActiveRecord::Base
  self.abstract_class = true
  connects_to database: { writing: :secondary }
end

spec = Gem.loaded_specs.fetch("secrets_sidecar")
puts JSON.generate(
  rails: Rails.version,
  ruby: RUBY_VERSION,
  gem_version: spec.version.to_s,
  gem_dir: spec.full_gem_path,
  gem_files: Dir.chdir(spec.full_gem_path) { Dir.glob("**/*", File::FNM_DOTMATCH).select { |f| File.file?(f) }.sort },
  railtie: Rails.application.railties.any? { |r| r.is_a?(SecretsSidecar::Railtie) },
  install_hook: Rails.application.config.secrets_sidecar.install_hook,
  mysql2: ActiveRecord::Base.connection.select_value("SELECT CURRENT_USER()"),
  postgresql: Secondary.connection.select_value("SELECT current_user"),
  hooks: SecretsSidecar::ActiveRecord.installed.map(&:to_s),
  # Where secrets_sidecar's files are loaded from: the gem's own lib directory, and nothing else.
  load_path: $LOAD_PATH.grep(/secrets_sidecar|contrib/),
  loaded: $LOADED_FEATURES.grep(%r{/secrets_sidecar(/|\.rb)})
)
