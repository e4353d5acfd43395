# frozen_string_literal: true

# Runs every contrib/ruby unit test: `ruby contrib/ruby/test/run.rb` (any working directory).
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__), __dir__)
Dir[File.join(__dir__, "*_test.rb")].sort.each { |f| require f }
