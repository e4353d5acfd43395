#!/usr/bin/env bash
# Builds the sidecar image from the repository's Dockerfile without a registry (`make image`).
#
# The Dockerfile's default stage, `source`, builds the binary in `rust:…`, an image only a registry can
# provide. Its `prebuilt` stage takes the same three things from the build context instead: the static
# binary `make release` built on this machine (the same target `source` runs), this machine's CA bundle
# and an empty directory for /secrets. The final stage, the image users run, is the same either way.
#
# Engine: podman (through scripts/podman.sh, with the project's settings), else Docker if its daemon
# answers. `--format docker` because the OCI image format has no HEALTHCHECK and podman drops it.
#
# Usage: scripts/image.sh --check          exit 1, naming what to install, if there is no engine
#        scripts/image.sh BINARY IMAGE     build IMAGE (name:tag) around BINARY
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v podman >/dev/null; then
  engine=(scripts/podman.sh) format=(--format docker)
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  # BuildKit builds only the stages the target needs, so the `source` stage's base is never pulled.
  export DOCKER_BUILDKIT=1
  engine=(docker) format=()
else
  echo "make image: no container engine. Install podman (Debian/Ubuntu: apt-get install podman runc;" >&2
  echo "  Fedora: dnf install podman) or Docker with a running daemon." >&2
  if command -v docker >/dev/null; then
    echo "  (docker is installed, but its daemon does not answer: docker info fails)" >&2
  fi
  exit 1
fi
[[ ${1:-} == --check ]] && exit 0

[[ $# -eq 2 ]] || { echo "usage: $0 BINARY IMAGE" >&2; exit 2; }
bin=$1 image=$2
[[ -x $bin ]] || { echo "make image: $bin is not an executable (make release builds it)" >&2; exit 1; }
# The bundle the `source` stage copies is Debian's (rust:…-bookworm); these are its usual homes elsewhere.
ca=
for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
  [[ -s $f ]] && { ca=$f; break; }
done
[[ -n $ca ]] || { echo "make image: no CA bundle on this machine (Debian/Ubuntu: apt-get install ca-certificates)" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
install -m 0755 "$bin" "$context/secrets-sidecar"
install -m 0644 "$ca" "$context/ca-certificates.crt"
install -d -m 0755 "$context/secrets"
"${engine[@]}" build "${format[@]}" --build-arg SIDECAR_BUILD=prebuilt -f Dockerfile -t "$image" "$context"
size=$("${engine[@]}" image inspect --format '{{.Size}}' "$image")
echo "make image: $image, $(awk -v b="$size" 'BEGIN { printf "%.2f MiB (%d bytes)", b / 1048576, b }')"
