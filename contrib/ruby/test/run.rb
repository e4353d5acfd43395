# frozen_string_literal: true

# Runs every contrib/ruby unit test: `ruby contrib/ruby/test/run.rb` (any working directory). The tests load
# the library by relative path, as the gem's files load each other: no load path to set up.
Dir[File.join(__dir__, "*_test.rb")].sort.each { |f| require f }
