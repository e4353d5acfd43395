#!/usr/bin/env bash
# What CI can check of the image without a Docker engine (issue 3): the release binary that the
# Dockerfile's builder stage produces with the same `make release`.
#   1. statically linked: no PT_INTERP (dynamic loader) and no NEEDED shared libraries, so it
#      runs in `scratch`; with root, it is also run in an empty chroot to prove it;
#   2. `--version` runs and prints the crate version from Cargo.toml;
#   3. `healthcheck` exits exactly 1, quickly, when nothing listens on SIDECAR_LISTEN (and 0 / 1
#      against a local /healthz answering 200 / 503), as the ECS health check relies on;
#   4. prints the size in MiB;
#   5. with root and the test venv: runs the daemon in a hand-built copy of the image's root as the
#      task definition's user, against moto, and checks the files the app will read.
# Usage: scripts/check-release.sh PATH/TO/secrets-sidecar      (make check-release does this)
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 PATH/TO/secrets-sidecar" >&2; exit 2; }
bin=$(realpath -- "$1" 2>/dev/null) || { echo "check-release: FAIL: $1 does not exist" >&2; exit 1; }
cd "$(dirname "$0")/.."

fail() { echo "check-release: FAIL: $*" >&2; exit 1; }
ok() { echo "check-release: ok: $*"; }
ms_now() { date +%s%3N; }

[[ -f $bin && -x $bin ]] || fail "$bin is not an executable file"
command -v readelf >/dev/null || fail "readelf not found (Debian package binutils; scripts/install-test-deps.sh installs it)"
command -v python3 >/dev/null || fail "python3 not found (needed for a free port and a local /healthz)"
readelf -h "$bin" >/dev/null 2>&1 || fail "$bin is not an ELF file"

# -- 1. static linking -----------------------------------------------------------------------
# A static-pie binary still has a DYNAMIC segment (for its own relocations); what `scratch`
# cannot satisfy is a requested interpreter or a needed shared library.
segments=$(readelf -lW "$bin")
if awk '$1 == "INTERP" { found = 1 } END { exit !found }' <<<"$segments"; then
  fail "$bin requests a dynamic loader ($(grep -o 'Requesting program interpreter: [^]]*' <<<"$segments" || echo PT_INTERP)); it would not start in scratch"
fi
needed=$(readelf -dW "$bin" | grep '(NEEDED)' || true)
[[ -z $needed ]] || fail "$bin needs shared libraries, absent from scratch:"$'\n'"$needed"
ok "statically linked: no PT_INTERP, no NEEDED entries"

# -- 2. --version ----------------------------------------------------------------------------
version=$(sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || fail "no [package] version in Cargo.toml"
# env -i: the image's environment has nothing of this machine's.
out=$(env -i timeout 10 "$bin" --version 2>&1) || fail "--version exited $?: $out"
grep -Eq "^secrets-sidecar\b.*(^|[^0-9.])${version//./\\.}([^0-9.]|$)" <<<"$out" \
  || fail "--version printed '$out', expected secrets-sidecar $version (Cargo.toml)"
ok "--version: $out"

# -- 3. healthcheck --------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs `healthcheck` against 127.0.0.1:$1 with nothing else in the environment; sets hc_rc, hc_ms.
run_healthcheck() {
  local start out
  start=$(ms_now)
  set +e
  out=$(env -i SIDECAR_LISTEN="127.0.0.1:$1" timeout 10 "$bin" healthcheck 2>&1)
  hc_rc=$?
  set -e
  hc_ms=$(($(ms_now) - start))
  hc_out=$out
}

port=$(free_port)
run_healthcheck "$port"
[[ $hc_rc -ne 124 ]] || fail "healthcheck hung (killed after 10 s) with nothing listening on 127.0.0.1:$port"
[[ $hc_rc -eq 1 ]] || fail "healthcheck exited $hc_rc with nothing listening on 127.0.0.1:$port, expected exactly 1: $hc_out"
# Connection refused is immediate; the probe's 2 s timeout is for a hung server, not this.
((hc_ms < 3000)) || fail "healthcheck took ${hc_ms} ms to notice that nothing listens (limit 3000 ms)"
ok "healthcheck exits 1 in ${hc_ms} ms when nothing listens on 127.0.0.1:$port"

# A local stand-in for the daemon's /healthz, on 127.0.0.1, answering STATUS to every request;
# it serves at most 5 requests and exits by itself after 20 s.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/healthz.py" <<'PY'
import http.server, signal, sys
status = int(sys.argv[1])
signal.alarm(20)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok": true}' if status == 200 else b'{"error": "not ready"}'
        self.send_response(status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class Quiet(http.server.HTTPServer):
    def handle_error(self, request, client_address):
        pass  # a probe that hangs up after the status line is fine
srv = Quiet(("127.0.0.1", 0), H)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
for _ in range(5):
    srv.handle_request()
PY
for want in "200 0" "503 1"; do
  read -r status expect <<<"$want"
  rm -f "$work/port"
  python3 "$work/healthz.py" "$status" "$work/port" &
  srv_pid=$!
  for _ in $(seq 50); do [[ -s $work/port ]] && break; sleep 0.1; done
  [[ -s $work/port ]] || fail "the local /healthz stand-in did not start"
  run_healthcheck "$(cat "$work/port")"
  kill "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true
  [[ $hc_rc -eq $expect ]] || fail "healthcheck exited $hc_rc against a /healthz answering $status, expected $expect: $hc_out"
  ok "healthcheck exits $expect when /healthz answers $status"
done

# -- 1b. in an empty root, as in `scratch` ---------------------------------------------------
if [[ $(id -u) -eq 0 ]] && command -v chroot >/dev/null; then
  root=$work/root
  mkdir "$root"
  cp "$bin" "$root/secrets-sidecar"
  chroot_bin=$(command -v chroot)
  out=$(env -i "$chroot_bin" "$root" /secrets-sidecar --version 2>&1) || fail "--version fails in an empty root (no /lib, no /etc): $out"
  port=$(free_port)
  set +e; env -i SIDECAR_LISTEN="127.0.0.1:$port" timeout 10 "$chroot_bin" "$root" /secrets-sidecar healthcheck >/dev/null 2>&1; rc=$?; set -e
  [[ $rc -eq 1 ]] || fail "healthcheck exited $rc in an empty root, expected 1"
  ok "runs in an empty root directory (nothing but the binary, as in scratch)"
else
  echo "check-release: note: not root, the empty-root (chroot) run was not done"
fi

# -- 5. the image's root, assembled by hand, running the daemon --------------------------------
# With root and the test venv (moto's Secrets Manager emulator): build the runtime stage's file
# tree without Docker (the binary, the CA bundle, /secrets owned 65532 mode 0755, plus /dev/null), run the daemon in it as the task definition's user
# against moto on 127.0.0.1, and check what the app container will see.
venv=.venv/bin
if [[ -n ${CHECK_RELEASE_NO_DAEMON:-} ]]; then
  # Only for tests/deploy/test_check_release.py, whose C stand-in has no daemon to run.
  echo "check-release: note: CHECK_RELEASE_NO_DAEMON set, the daemon run in the image's root was not done"
elif [[ $(id -u) -eq 0 && -x $venv/moto_server && -x $venv/python ]] && command -v chroot >/dev/null; then
  user=$(python3 -c 'import json; print(next(c["user"] for c in json.load(open("ecs-task-def.json"))["containerDefinitions"] if c["name"] == "secrets-sidecar"))')
  gid=${user#*:}
  img=$work/image
  chmod 0755 "$work"  # mktemp -d is 0700: the app uid must be able to reach /secrets
  mkdir -p "$img/etc/ssl/certs" "$img/secrets" "$img/dev"
  cp "$bin" "$img/secrets-sidecar"
  cp /etc/ssl/certs/ca-certificates.crt "$img/etc/ssl/certs/"
  chown 65532:65532 "$img/secrets" && chmod 0755 "$img/secrets"
  # Only /dev/null: the binary takes randomness from getrandom(2) (Makefile, RELEASE_RUSTFLAGS), so a root
  # without /dev/urandom must work too.
  mknod -m 666 "$img/dev/null" c 1 3
  moto_port=$(free_port)
  "$venv/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
  moto_pid=$!
  side_pid=
  trap 'kill $moto_pid $side_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
  secret='{"username":"app","password":"check-release-not-a-real-password"}'
  arn=$(AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x "$venv/python" - "$moto_port" "$secret" <<'PY'
import sys, time, boto3, botocore.exceptions
c = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
deadline = time.monotonic() + 20
while True:
    try:
        print(c.create_secret(Name="rds!cluster-check-release", SecretString=sys.argv[2])["ARN"])
        break
    except botocore.exceptions.EndpointConnectionError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
PY
  ) || fail "could not create a secret in moto: $(tail -5 "$work/moto.log")"
  listen_port=$(free_port)
  chroot_bin=$(command -v chroot)
  # Exactly what ECS gives the container: the image's ENV, the task's SIDECAR_SECRETS, a Region
  # and credentials; plus the emulator's endpoint.
  env -i SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt SIDECAR_OUTPUT_DIR=/secrets \
    SIDECAR_SECRETS="db=$arn" SIDECAR_LISTEN="127.0.0.1:$listen_port" \
    SIDECAR_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=eu-west-1 \
    AWS_ACCESS_KEY_ID=AKIDEXAMPLE AWS_SECRET_ACCESS_KEY=not-a-real-key AWS_EC2_METADATA_DISABLED=true \
    timeout --preserve-status 60 "$chroot_bin" --userspec="$user" "$img" /secrets-sidecar >"$work/sidecar.log" 2>&1 &
  side_pid=$!
  healthy=
  for _ in $(seq 100); do
    if env -i SIDECAR_LISTEN="127.0.0.1:$listen_port" "$chroot_bin" --userspec="$user" "$img" /secrets-sidecar healthcheck >/dev/null 2>&1; then
      healthy=1; break
    fi
    kill -0 "$side_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $healthy ]] || fail "the daemon in the image root never became healthy:"$'\n'"$(tail -20 "$work/sidecar.log")"
  f=$img/secrets/db.json
  [[ $(stat -c '%a %u %g' "$f") == "440 65532 $gid" ]] || fail "db.json is $(stat -c '%a %u:%g' "$f"), expected 440 65532:$gid"
  [[ $(stat -c '%a %u %g' "$img/secrets/.token") == "440 65532 $gid" ]] || fail ".token is $(stat -c '%a %u:%g' "$img/secrets/.token")"
  # The app (uid/gid 1000 in the task definition) reads it through the group; anyone else cannot.
  got=$(env -i PATH=/usr/bin:/bin "$chroot_bin" --userspec="1000:$gid" / cat "$f") || fail "the app's uid/gid 1000:$gid cannot read db.json"
  [[ $got == "$secret" ]] || fail "db.json holds '$got', not the secret"
  if env -i PATH=/usr/bin:/bin "$chroot_bin" --userspec=1001:1001 / cat "$f" >/dev/null 2>&1; then
    fail "db.json is readable by an unrelated uid/gid 1001:1001"
  fi
  kill -TERM "$side_pid"
  start=$(ms_now)
  set +e; wait "$side_pid"; rc=$?; set -e
  side_pid=
  stop_ms=$(($(ms_now) - start))
  [[ $rc -eq 0 ]] || fail "the daemon exited $rc on SIGTERM, expected 0:"$'\n'"$(tail -5 "$work/sidecar.log")"
  ((stop_ms < 3000)) || fail "the daemon took ${stop_ms} ms to stop on SIGTERM"
  if grep -q "check-release-not-a-real-password" "$work/sidecar.log"; then fail "the daemon logged the secret value"; fi
  ok "in the image's root as $user against moto: healthy, db.json 0440 65532:$gid, readable by 1000:$gid only, SIGTERM exit 0 in ${stop_ms} ms"
else
  echo "check-release: note: needs root and .venv (make deps) for the run in the image's root; not done"
fi

# -- 4. size ---------------------------------------------------------------------------------
bytes=$(stat -c %s "$bin")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "check-release: size: $mib MiB ($bytes bytes) $bin"
echo "check-release: all checks passed"
