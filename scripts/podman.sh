#!/usr/bin/env bash
# podman with the settings the project's targets and tests need, set here instead of in the machine's
# files (docs/ecs.md, "Machine settings"):
#  - CONTAINERS_CONF=scripts/containers.conf: no default ulimits, which a sandboxed machine may not raise;
#  - the runc runtime wherever runc is installed: crun, podman's other runtime, refuses hosts whose cgroups
#    are in hybrid mode ("cgroups in hybrid mode not supported"); runc runs there and everywhere else.
# Usage: scripts/podman.sh PODMAN-ARGS...
set -euo pipefail
export CONTAINERS_CONF
CONTAINERS_CONF="$(cd "$(dirname "$0")" && pwd)/containers.conf"
runtime=()
if runc=$(command -v runc); then runtime=(--runtime "$runc"); fi
exec podman "${runtime[@]}" "$@"
