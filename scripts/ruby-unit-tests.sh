#!/usr/bin/env bash
# The contrib/ruby unit tests on both Ruby stacks the project proves: Debian 12's (Ruby 3.1, ActiveRecord
# 6.1, from apt) and Debian 13's (Ruby 3.3, ActiveRecord 7.2, in the root scripts/trixie-root.sh builds).
# The tests are copied into the root for the second run; nothing in the root is changed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> Ruby unit tests (contrib/ruby) on Debian 12: $(ruby -e 'print "Ruby #{RUBY_VERSION}"'), activerecord 6.1"
ruby -w contrib/ruby/test/run.rb

root=$(scripts/trixie-root.sh --path)
if [[ ! -f $root/.secrets-sidecar-root ]]; then
  echo "error: the Debian 13 Ruby stack is missing at $root: run scripts/trixie-root.sh as root (make deps does)" >&2
  exit 1
fi
echo "==> Ruby unit tests (contrib/ruby) on Debian 13 (chroot $root): Ruby 3.3, activerecord 7.2"
stage=$(mktemp -d "$root/tmp/contrib-ruby.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -r contrib/ruby/. "$stage/"
chroot "$root" ruby -w "/${stage#"$root"/}/test/run.rb"
