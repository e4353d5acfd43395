#!/usr/bin/env bash
# The local demo (`make demo`): starts moto's Secrets Manager emulator, creates a database secret, runs
# the sidecar against it with a --template that renders a DATABASE_URL from it, rotates the secret the way a
# rotation Lambda does, and shows the file, the rendered URL and the endpoint follow. Everything runs on
# 127.0.0.1 and is stopped on exit. The rendered URL is printed with its password masked (demos end up in
# screenshots).
#
# `scripts/demo.sh --dev` (`make demo-dev`) needs nothing but cargo: the sidecar reads a local
# --dev-secrets file instead of Secrets Manager and an edit of that file plays the rotation. `make demo`
# falls back to it when Python's venv is not available for the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=emulator
[[ ${1:-} == --dev ]] && mode=dev

free_port() {
  # Python where there is one; otherwise bash's /dev/tcp probing a few random high ports.
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    local p
    while p=$((20000 + RANDOM % 20000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do :; done
    echo "$p"
  fi
}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building secrets-sidecar"
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-$root/target}/debug/secrets-sidecar

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
listen=127.0.0.1:$(free_port)
mkdir -p "$work/secrets"
# A DATABASE_URL in one line; the password is urlencoded, so a `/` or `@` in it cannot break the URL.
template=$work/db_url.j2
echo 'DATABASE_URL=mysql2://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ dbname }}' >"$template"
first='{"username":"app","password":"first-p@ss/word","host":"db.internal","port":3306,"dbname":"app"}'
second='{"username":"app","password":"second-p@ss/word","host":"db.internal","port":3306,"dbname":"app"}'

if [[ $mode == emulator ]]; then
  moto_port=$(free_port)
  step "starting the Secrets Manager emulator (moto) on 127.0.0.1:$moto_port"
  .venv/bin/moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
  pids+=($!)
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_SECRETS_MANAGER="http://127.0.0.1:$moto_port"
  for _ in $(seq 100); do curl -fs "$AWS_ENDPOINT_URL_SECRETS_MANAGER/moto-api/" >/dev/null 2>&1 && break; sleep 0.1; done
  secret='rds!cluster-demo'
  step "creating the secret $secret"
  .venv/bin/python scripts/demo_sm.py create "$secret" "$first"
  step "starting the sidecar: --secret db=$secret --template db_url=$template?from=db --refresh-interval 2s"
  "$bin" --secret "db=$secret" --template "db_url=$template?from=db" --refresh-interval 2s \
    --output-dir "$work/secrets" --listen "$listen" --log-format text >"$work/sidecar.log" 2>&1 &
  pids+=($!)
else
  dev=$work/dev-secrets.json
  echo "{\"db\": $first}" >"$dev"
  step "starting the sidecar on a local dev file (no AWS, no emulator): --dev-secrets $dev --template db_url=$template?from=db"
  "$bin" --dev-secrets "$dev" --template "db_url=$template?from=db" --output-dir "$work/secrets" \
    --listen "$listen" --log-format text >"$work/sidecar.log" 2>&1 &
  pids+=($!)
fi
until "$bin" healthcheck --listen "$listen" 2>/dev/null; do sleep 0.2; done
token=$(cat "$work/secrets/.token")

get() { curl -fsS -H "X-Secrets-Sidecar-Token: $token" "http://$listen$1"; }
# A URL with its password shown as its first 2 characters and its length: enough to see it change.
mask() {
  if [[ $1 =~ ^(.*://[^:/]*:)([^@]*)(@.*)$ ]]; then
    local p=${BASH_REMATCH[2]}
    echo "${BASH_REMATCH[1]}${p:0:2}…(${#p} chars)${BASH_REMATCH[3]}"
  else
    echo "(not a URL with a password)"
  fi
}
show() {
  echo "file  $work/secrets/db.json:"
  echo "      $(cat "$work/secrets/db.json")"
  echo "file  $work/secrets/db_url (rendered from the template; password masked here):"
  echo "      $(mask "$(cat "$work/secrets/db_url")")"
  echo "HTTP  GET /v1/secrets/db:"
  echo "      $(get /v1/secrets/db)"
  echo "HTTP  GET /v1/secrets/db/password:"
  echo "      $(get /v1/secrets/db/password)"
}
step "ready; what the app sees"
show

if [[ $mode == emulator ]]; then
  step "rotating the secret (PutSecretValue AWSPENDING, then UpdateSecretVersionStage AWSCURRENT)"
  .venv/bin/python scripts/demo_sm.py rotate "$secret" "$second"
  what="within one refresh interval"
else
  step "editing the dev file, as a rotation would change the secret"
  echo "{\"db\": $second}" >"$dev.tmp" && mv "$dev.tmp" "$dev"
  what="within a fraction of a second"
fi
for _ in $(seq 50); do grep -q second-p "$work/secrets/db.json" && grep -q :second- "$work/secrets/db_url" && break; sleep 0.1; done
step "$what the file, the rendered DATABASE_URL and the endpoint changed"
show

step "health (no token needed)"
curl -fsS "http://$listen/healthz"; echo
step "the sidecar's log"
cat "$work/sidecar.log"
