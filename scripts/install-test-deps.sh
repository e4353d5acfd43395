#!/usr/bin/env bash
# Installs everything the test suite needs that cargo does not fetch itself:
#  - the pinned Python tools (moto's Secrets Manager emulator, ...) in ./.venv;
#  - Debian packages for the end-to-end tests (real MariaDB, PostgreSQL, Ruby + ActiveRecord, Railties for
#    the Rails app that boots the secrets_sidecar gem, Ruby's dotenv for the format=env round trips, Puma +
#    Rack for the phased-restart proof of --on-change);
#  - podman and runc, which build the image from the Dockerfile (`make image`) and run it in the image tests;
#  - the second Ruby stack (Debian 13: Ruby 3.3, ActiveRecord and Railties 7.2), a debootstrap root cached outside the
#    clone (scripts/trixie-root.sh).
# Idempotent: a second run only checks.
# --emulator-only: just the Python venv (what `make demo` needs).
# --bench: the venv and wrk, the load generator of `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
emulator_only=false
[[ ${1:-} == --emulator-only || ${1:-} == --bench ]] && emulator_only=true

# wrk: scripts/test.sh runs one short round of `make bench`. podman + runc (not crun: scripts/podman.sh) +
# ca-certificates (the bundle `make image` puts into the image): the image tests.
DEB_PACKAGES=(mariadb-server mariadb-client postgresql ruby ruby-activerecord ruby-railties ruby-mysql2 ruby-pg ruby-dotenv puma ruby-rack binutils debootstrap openssl libpam-modules python3 wrk podman runc ca-certificates)

missing=()
if [[ ${1:-} == --bench ]]; then
  DEB_PACKAGES=(wrk)
elif $emulator_only; then
  DEB_PACKAGES=()
fi
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    # The packages' own services are never used: the tests start private servers.
    # policy-rc.d 101 keeps the packages' postinst from starting the machine's own instances.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; trap 'rm -f "$policy"' EXIT; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: the tests need these Debian packages: ${missing[*]}" >&2
    echo "       install them (as root: apt-get install ${missing[*]}) and run again." >&2
    exit 1
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
# Reinstall only when the pinned list changed since the last install.
want=$(sha256sum requirements-test.txt | cut -d' ' -f1)
if [[ $(cat .venv/.requirements.sha256 2>/dev/null) != "$want" ]]; then
  echo "==> pip install -r requirements-test.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
  echo "$want" > .venv/.requirements.sha256
fi

$emulator_only || scripts/trixie-root.sh
