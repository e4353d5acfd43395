#!/usr/bin/env bash
# Every test of the project, in one run: the image built from the Dockerfile (`make image`), the Rust
# unit and integration tests (moto, real MariaDB and PostgreSQL, real Ruby on two stacks, the image run
# as ECS runs it), the Ruby unit tests on both stacks, the deployment-file tests and one short round of
# `make bench`.
# `make test` runs scripts/install-test-deps.sh first; this script assumes it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export MOTO_SERVER="$root/.venv/bin/moto_server"
# The Debian 13 root (Ruby 3.3, ActiveRecord 7.2) that scripts/install-test-deps.sh built.
SIDECAR_TRIXIE_ROOT=$(scripts/trixie-root.sh --path)
export SIDECAR_TRIXIE_ROOT
target=${CARGO_TARGET_DIR:-$root/target}

echo "==> make image (the Dockerfile around the release binary; tests/image runs it)"
# A tag of this run's own: runs on the same machine share podman's image store.
export SIDECAR_IMAGE=localhost/secrets-sidecar:test-$$
make --no-print-directory image IMAGE="$SIDECAR_IMAGE"
trap 'scripts/podman.sh rmi "$SIDECAR_IMAGE" >/dev/null 2>&1 || true' EXIT

echo "==> cargo test (unit, integration against moto, end-to-end on MariaDB/PostgreSQL, the image)"
# --show-output: the end-to-end tests print their figures (queries, connections, rotations, refused and
# stale logins, the failure budget per stack), which a passing run would otherwise swallow.
cargo test --locked --workspace --all-targets --no-fail-fast -- --show-output

scripts/ruby-unit-tests.sh

echo "==> deployment files (tests/deploy)"
# check-config of the task definition's environment runs against the binary cargo test just built, with
# the environment of the image built above.
SIDECAR_BIN="$target/debug/secrets-sidecar" .venv/bin/python -m pytest -q tests/deploy

echo "==> make bench, one short round (every column of the table, against the release binary above)"
make --no-print-directory bench-smoke
