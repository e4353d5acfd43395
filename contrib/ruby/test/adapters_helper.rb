# frozen_string_literal: true

# Loads ActiveRecord, the hook and the adapters the way an app does on each supported version, so that
# every test sees the hooks installed:
# * 6.1/7.0: loading ActiveRecord::Base runs on_load(:active_record), from which the hook requires the
#   mysql2 and postgresql adapters itself.
# * 7.1+: the adapters load when the app first connects (7.2 from establish_connection); requiring them
#   here runs their load hooks (:active_record_mysql2adapter, …), which is where the hook installs.
# * trilogy (7.1+): the real TrilogyAdapter loads against the stand-in driver in stand_in/trilogy.rb, as
#   no Debian release packages the trilogy gem.
require "active_record"
require_relative "../lib/secrets_sidecar/active_record"

AR71 = ActiveRecord.gem_version >= Gem::Version.new("7.1")

ActiveRecord.const_get(:Base) # runs on_load(:active_record)
require "active_record/connection_adapters/mysql2_adapter"
require "active_record/connection_adapters/postgresql_adapter"
if AR71
  require_relative "stand_in/trilogy"
  # trilogy_adapter.rb starts with `gem "trilogy", "~> 2.7"` and `require "trilogy"`, which would look for
  # an installed gem: the stand-in above is that gem here.
  Kernel.prepend(Module.new do
    def gem(name, *requirements)
      name == "trilogy" ? true : super
    end

    def require(name)
      name == "trilogy" ? false : super
    end
  end)
  require "active_record/connection_adapters/trilogy_adapter"
end
