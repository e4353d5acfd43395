#!/usr/bin/env bash
# The second Ruby stack the tests run on: a Debian 13 (trixie) root made with debootstrap, holding Ruby
# 3.3, ActiveRecord 7.2, mysql2, pg, and Puma 6.6 with Rack and dotenv from Debian's own packages (no gem registry is needed or used). The
# Rails unit and end-to-end tests run `chroot ROOT ruby …` in it; the databases, the emulator and the
# sidecar stay outside and are reached over 127.0.0.1.
#
# Built once (about a minute, ~290 MiB) into $SIDECAR_TRIXIE_ROOT, by default
# /var/cache/secrets-sidecar/trixie-root — outside the clone, like CI's cargo target — and reused while its
# stamp matches the package list below. Built into a temporary directory and renamed into place, so an
# interrupted build never leaves a half root behind. Needs root (debootstrap, chroot) and the debootstrap
# package; anything missing is named and the script fails: the tests never skip this stack.
#
#   scripts/trixie-root.sh            build it if missing or stale
#   scripts/trixie-root.sh --path     print where it is (or would be)
set -euo pipefail

root=${SIDECAR_TRIXIE_ROOT:-/var/cache/secrets-sidecar/trixie-root}
if [[ ${1:-} == --path ]]; then
  echo "$root"
  exit 0
fi

suite=trixie
packages=ruby,ruby-activerecord,ruby-railties,ruby-mysql2,ruby-pg,puma,ruby-rack,ruby-dotenv
stamp_file=.secrets-sidecar-root
# debootstrap writes no /etc/hosts (an installer or a container runtime does): without one nothing in the
# root resolves `localhost`. The tests dial names, not only 127.0.0.1 (MariaDB Connector/C 3.4 does not
# check a certificate's name for 127.0.0.1), so the root gets Debian's standard two lines.
hosts=$'127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback'
want="$suite minbase $packages hosts"

if [[ -f $root/$stamp_file && $(cat "$root/$stamp_file") == "$want" ]]; then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "error: the Debian 13 Ruby stack ($root) is missing, and building it needs root (debootstrap, chroot)." >&2
  echo "       run as root: scripts/trixie-root.sh   (or: make deps)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "error: building the Debian 13 Ruby stack needs the debootstrap package: apt-get install debootstrap" >&2
  exit 1
fi

echo "==> debootstrap $suite into $root (Ruby 3.3 + ActiveRecord/Railties 7.2, about a minute)"
mkdir -p "$(dirname "$root")"
tmp="$root.partial"
rm -rf "$tmp"
# No mirror argument: debootstrap's own default Debian mirror.
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" > "$root.debootstrap.log" 2>&1; then
  tail -n 20 "$root.debootstrap.log" >&2
  echo "error: debootstrap $suite failed (log: $root.debootstrap.log); the Debian 13 Ruby stack is missing" >&2
  rm -rf "$tmp"
  exit 1
fi
printf '%s\n' "$hosts" > "$tmp/etc/hosts"
chroot "$tmp" ruby -e 'require "active_record"; require "mysql2"; require "pg"; require "minitest"
  require "puma"; require "rack"; require "dotenv"; require "rails"
  puts "    Ruby #{RUBY_VERSION}, activerecord #{ActiveRecord.version}, railties #{Rails.version}, mysql2 #{Mysql2::VERSION}, pg #{PG::VERSION}, puma #{Puma::Const::PUMA_VERSION}"'
echo "$want" > "$tmp/$stamp_file"
rm -rf "$root"
mv "$tmp" "$root"
