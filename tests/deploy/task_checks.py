"""The relations between the sidecar and the app that make ecs-task-def.json (and its rds-iam variant) work.

The ECS API accepts many task definitions in which the sidecar cannot do its job: an app that
starts before the credentials exist, a volume mounted by one container only, a health check that
runs a shell the scratch image does not have. Each check here returns a list of problems (empty:
fine), so the tests can apply it to the real file and to mutated copies (the negative controls).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import placeholders

SIDECAR = "secrets-sidecar"
APP = "app"
VOLUME = "secrets"
SIDECAR_UID = 65532
APP_GID = 1000
# The defaults of the daemon (docs/configuration.md), used when the task sets no env var for them.
DEFAULT_LISTEN = "127.0.0.1:2773"
DEFAULT_OUTPUT_DIR = "/secrets"
# `secrets-sidecar healthcheck` gives up on /healthz after 2 s (docs/http-api.md); ECS's timeout must be
# longer, or ECS kills the probe before it can answer with its own exit code.
HEALTHCHECK_OWN_TIMEOUT_S = 2
# ECS healthCheck limits, from the ECS Developer Guide's "Task definition parameters" (healthCheck).
HEALTHCHECK_LIMITS = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10), "startPeriod": (0, 300)}
# `NAME=rds-iam://USER@HOST:PORT[?region=R&dbname=D]` (docs/rds-iam.md): the sidecar signs an RDS IAM auth token
# for USER at HOST:PORT and publishes it as NAME.json. The app sends a token only over TLS to a server it
# verified with the RDS CA bundle, which is in the app's own image (docs/rds-iam.md).
RDS_IAM_SCHEME = "rds-iam://"
RDS_IAM_OPTIONS = ("region", "dbname")
CA_FILE_VAR = "SECRETS_SIDECAR_CA_FILE"
# Volume members that turn a task-scoped bind mount into something else (host path, Docker
# volume driver, EFS, FSx, EBS at launch): Fargate's root-owned-0755 rule and the copy of the
# image's /secrets apply only to the plain `{"name": ...}` form.
NON_TASK_SCOPED_VOLUME_KEYS = (
    "host",
    "dockerVolumeConfiguration",
    "efsVolumeConfiguration",
    "fsxWindowsFileServerVolumeConfiguration",
    "configuredAtLaunch",
)


def container(td: dict, name: str) -> dict:
    for c in td.get("containerDefinitions", []):
        if c.get("name") == name:
            return c
    raise KeyError(f"no container named {name!r} in the task definition")


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("environment", [])}


def parse_user(user: str) -> tuple[int, int | None]:
    uid, _, gid = user.partition(":")
    return int(uid), (int(gid) if gid else None)


def failover_regions(env: dict[str, str]) -> dict[str, str]:
    """The failover Region of each Secrets Manager entry, by NAME: its own `failover_region=` option, else
    SIDECAR_FAILOVER_REGION (docs/failover.md); entries without one are left out."""
    out = {}
    for entry in filter(None, env.get("SIDECAR_SECRETS", "").split(",")):
        name, _, rest = entry.partition("=")
        if rest.startswith(RDS_IAM_SCHEME):
            continue
        options = dict(opt.partition("=")[::2] for opt in filter(None, rest.partition("?")[2].split("&")))
        region = options.get("failover_region") or env.get("SIDECAR_FAILOVER_REGION")
        if region:
            out[name] = region
    return out


def replica_arn(arn: str, region: str) -> str:
    """A replica's ARN: its primary's with the Region replaced (arn:PARTITION:secretsmanager:REGION:…)."""
    fields = arn.split(":", 6)
    fields[3] = region
    return ":".join(fields)


def secret_specs(sidecar_secrets: str) -> list[tuple[str, str, str]]:
    """(NAME, SECRET_ID, format) from SIDECAR_SECRETS. Only for relating names to paths; whether
    the value is valid is decided by the sidecar itself (`check-config`, test_task_definition)."""
    specs = []
    for entry in sidecar_secrets.split(","):
        name, _, rest = entry.partition("=")
        secret_id, _, query = rest.partition("?")
        fmt = "json"
        for opt in filter(None, query.split("&")):
            k, _, v = opt.partition("=")
            if k == "format":
                fmt = v
        specs.append((name, secret_id, fmt))
    return specs


class RdsIamEntry(NamedTuple):
    name: str
    user: str
    host: str
    port: str
    options: dict[str, str]


def rds_iam_entries(sidecar_secrets: str) -> list[RdsIamEntry]:
    """The `rds-iam://` entries of SIDECAR_SECRETS, split as the sidecar splits them (the user ends at
    the last `@`, the port starts after the last `:`), to relate them to the app and the policy."""
    entries = []
    for entry in sidecar_secrets.split(","):
        name, _, rest = entry.partition("=")
        if not rest.startswith(RDS_IAM_SCHEME):
            continue
        authority, _, query = rest[len(RDS_IAM_SCHEME) :].partition("?")
        user, _, host_port = authority.rpartition("@")
        host, colon, port = host_port.rpartition(":")
        if not colon:
            host, port = host_port, ""
        options = {k: v for k, _, v in (opt.partition("=") for opt in filter(None, query.split("&")))}
        entries.append(RdsIamEntry(name, user, host, port, options))
    return entries


def mount(c: dict, volume: str = VOLUME) -> dict | None:
    for m in c.get("mountPoints", []):
        if m.get("sourceVolume") == volume:
            return m
    return None


def check_shared_volume(td: dict) -> list[str]:
    problems = []
    vols = [v for v in td.get("volumes", []) if v.get("name") == VOLUME]
    if len(vols) != 1:
        return [f"expected exactly one task volume named {VOLUME!r}, found {len(vols)}"]
    extra = [k for k in NON_TASK_SCOPED_VOLUME_KEYS if k in vols[0]]
    if extra:
        problems.append(f"volume {VOLUME!r} must be task-scoped (only a name), but sets {extra}")
    side, app = mount(container(td, SIDECAR)), mount(container(td, APP))
    if side is None:
        problems.append(f"{SIDECAR} does not mount volume {VOLUME!r}")
    else:
        if side.get("containerPath") != DEFAULT_OUTPUT_DIR:
            problems.append(f"{SIDECAR} mounts {VOLUME!r} at {side.get('containerPath')!r}, not {DEFAULT_OUTPUT_DIR}")
        if side.get("readOnly", False) is not False:
            problems.append(f"{SIDECAR} must mount {VOLUME!r} read-write (it writes the files)")
    if app is None:
        problems.append(f"{APP} does not mount volume {VOLUME!r}")
    elif app.get("readOnly") is not True:
        problems.append(f"{APP} must mount {VOLUME!r} read-only (readOnly: true)")
    return problems


def check_app_waits_for_healthy_sidecar(td: dict) -> list[str]:
    deps = container(td, APP).get("dependsOn", [])
    on_sidecar = [d for d in deps if d.get("containerName") == SIDECAR]
    if [d.get("condition") for d in on_sidecar] != ["HEALTHY"]:
        return [f"{APP} must have exactly one dependsOn {SIDECAR} with condition HEALTHY, has {on_sidecar}"]
    return []


def check_healthcheck(td: dict, entrypoint: str) -> list[str]:
    side = container(td, SIDECAR)
    hc = side.get("healthCheck")
    if hc is None:
        return [f"{SIDECAR} has no healthCheck (dependsOn HEALTHY needs one)"]
    problems = []
    # Exec form: the scratch image has no shell for CMD-SHELL.
    want = ["CMD", entrypoint, "healthcheck"]
    if hc.get("command") != want:
        problems.append(f"healthCheck.command must be {want}, is {hc.get('command')}")
    for key, (lo, hi) in HEALTHCHECK_LIMITS.items():
        v = hc.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            problems.append(f"healthCheck.{key} must be set and within ECS's {lo}..{hi}, is {v!r}")
    t = hc.get("timeout")
    if isinstance(t, int) and t <= HEALTHCHECK_OWN_TIMEOUT_S:
        problems.append(
            f"healthCheck.timeout {t} s must exceed the probe's own {HEALTHCHECK_OWN_TIMEOUT_S} s HTTP timeout"
        )
    return problems


def check_sidecar_hardening(td: dict) -> list[str]:
    side, app = container(td, SIDECAR), container(td, APP)
    problems = []
    if side.get("essential", True) is not True:
        problems.append(f"{SIDECAR} must be essential (its exit must stop the task)")
    if side.get("readonlyRootFilesystem") is not True:
        problems.append(f"{SIDECAR} must set readonlyRootFilesystem: true")
    try:
        uid, gid = parse_user(side.get("user", ""))
    except ValueError:
        return problems + [f"{SIDECAR} user must be numeric UID:GID, is {side.get('user')!r}"]
    if uid != SIDECAR_UID:
        problems.append(f"{SIDECAR} must run as uid {SIDECAR_UID} (owner of /secrets in the image), not {uid}")
    if gid != APP_GID:
        problems.append(f"{SIDECAR} must run with gid {APP_GID} (the app's group) so 0440 files are readable, not {gid}")
    if "user" in app:
        try:
            app_uid, app_gid = parse_user(app["user"])
        except ValueError:
            return problems + [f"{APP} user must be numeric UID:GID, is {app['user']!r}"]
        if app_gid != gid:
            problems.append(f"{APP} runs with gid {app_gid} but the sidecar's files get gid {gid}")
        if app_uid == SIDECAR_UID:
            problems.append(f"{APP} must not run as the sidecar's uid {SIDECAR_UID}")
    return problems


def _db_secret_arns(td: dict) -> list[str]:
    return [sid for _, sid, _ in secret_specs(env_of(container(td, SIDECAR)).get("SIDECAR_SECRETS", ""))]


def check_no_value_from_for_db_password(td: dict) -> list[str]:
    """The whole point: ECS's `secrets`/`valueFrom` injects the password once, at start."""
    arns = _db_secret_arns(td)
    problems = []
    for c in td.get("containerDefinitions", []):
        for s in c.get("secrets", []):
            vf, name = s.get("valueFrom", ""), s.get("name", "")
            # valueFrom may be the ARN or ARN:json-key:version-stage:version-id.
            if any(vf == a or vf.startswith(a + ":") for a in arns):
                problems.append(f"{c['name']} still injects the sidecar's secret via valueFrom ({name})")
            elif "PASSWORD" in name.upper() or name.upper() == "DATABASE_URL":
                problems.append(f"{c['name']} still injects {name} via secrets/valueFrom")
    return problems


def check_app_points_at_sidecar(td: dict, image_env: dict[str, str]) -> list[str]:
    """SECRETS_SIDECAR_* in the app name the file, URL and token the sidecar really produces."""
    side_env = {**image_env, **env_of(container(td, SIDECAR))}
    app_env = env_of(container(td, APP))
    specs = secret_specs(side_env.get("SIDECAR_SECRETS", ""))
    if not specs or not specs[0][0]:
        return ["SIDECAR_SECRETS names no secret"]
    name, _, fmt = specs[0]
    out_dir = side_env.get("SIDECAR_OUTPUT_DIR", DEFAULT_OUTPUT_DIR)
    listen = side_env.get("SIDECAR_LISTEN", DEFAULT_LISTEN)
    problems = []
    side_mount = mount(container(td, SIDECAR)) or {}
    app_mount = mount(container(td, APP)) or {}
    if side_mount.get("containerPath") != out_dir:
        problems.append(f"the sidecar writes to {out_dir} but mounts the volume at {side_mount.get('containerPath')}")
    app_dir = app_mount.get("containerPath", "<unmounted>")
    file_name = f"{name}.json" if fmt == "json" else name
    want = {
        "SECRETS_SIDECAR_FILE": f"{app_dir}/{file_name}",
        "SECRETS_SIDECAR_URL": f"http://{listen}/v1/secrets/{name}",
        "SECRETS_SIDECAR_TOKEN_FILE": f"{app_dir}/.token",
    }
    for key, value in want.items():
        if app_env.get(key) != value:
            problems.append(f"{APP} {key} is {app_env.get(key)!r}, the sidecar serves {value!r}")
    return problems


def _port_ok(port: str) -> bool:
    # A placeholder is filled in before registering; check-config then sees the number.
    if placeholders.PLACEHOLDER.fullmatch(port):
        return True
    return re.fullmatch(r"[0-9]{1,5}", port) is not None and 1 <= int(port) <= 65535


def check_rds_iam(td: dict) -> list[str]:
    """Each `rds-iam://` entry names a user, a host and a numeric port (the token is signed for
    HOST:PORT), and the app can verify the server it sends the token to: SECRETS_SIDECAR_CA_FILE, an
    absolute path in the app image that no mount of the app hides. A task without such entries has
    nothing to check here."""
    entries = rds_iam_entries(env_of(container(td, SIDECAR)).get("SIDECAR_SECRETS", ""))
    if not entries:
        return []
    problems = []
    for e in entries:
        what = f"rds-iam entry {e.name!r}"
        if not e.user:
            problems.append(f"{what} names no user (USER@HOST:PORT)")
        if not e.host:
            problems.append(f"{what} names no host (USER@HOST:PORT)")
        if not _port_ok(e.port):
            problems.append(f"{what}: the port must be a number 1..65535 (the token is signed for HOST:PORT), is {e.port!r}")
        unknown = sorted(set(e.options) - set(RDS_IAM_OPTIONS))
        if unknown:
            problems.append(f"{what}: unknown option(s) {unknown}, an IAM entry takes only {list(RDS_IAM_OPTIONS)}")
    app = container(td, APP)
    ca = env_of(app).get(CA_FILE_VAR)
    if not ca:
        problems.append(f"{APP} has no {CA_FILE_VAR}: the hook sends a token only to a server verified with the RDS CA bundle")
    elif not ca.startswith("/"):
        problems.append(f"{APP} {CA_FILE_VAR} must be an absolute path in the app image, is {ca!r}")
    else:
        for m in app.get("mountPoints", []):
            path = m.get("containerPath", "").rstrip("/")
            if ca.startswith(path + "/"):
                problems.append(f"{APP} {CA_FILE_VAR} {ca} is under the mount {path}, which hides the app image's files there")
    return problems


# Fargate's task-level cpu (units) -> allowed memory (MiB), from the ECS developer guide's table.
def _fargate_memory(cpu: int) -> set[int]:
    gib = 1024
    table = {
        256: {512, 1 * gib, 2 * gib},
        512: set(range(1 * gib, 4 * gib + 1, gib)),
        1024: set(range(2 * gib, 8 * gib + 1, gib)),
        2048: set(range(4 * gib, 16 * gib + 1, gib)),
        4096: set(range(8 * gib, 30 * gib + 1, gib)),
        8192: set(range(16 * gib, 60 * gib + 1, 4 * gib)),
        16384: set(range(32 * gib, 120 * gib + 1, 8 * gib)),
    }
    return table.get(cpu, set())


def check_fargate(td: dict) -> list[str]:
    problems = []
    if td.get("networkMode") != "awsvpc":
        problems.append("Fargate needs networkMode awsvpc (and 127.0.0.1 is task-local only with it)")
    if "FARGATE" not in td.get("requiresCompatibilities", []):
        problems.append("requiresCompatibilities must include FARGATE")
    try:
        cpu, mem = int(td["cpu"]), int(td["memory"])
    except (KeyError, ValueError):
        return problems + ["Fargate needs task-level cpu and memory as numbers in strings"]
    if mem not in _fargate_memory(cpu):
        problems.append(f"cpu {cpu} / memory {mem} is not a Fargate combination")
    containers = td.get("containerDefinitions", [])
    if sum(c.get("cpu", 0) for c in containers) > cpu:
        problems.append("container cpu reservations exceed the task's cpu")
    if sum(c.get("memoryReservation", c.get("memory", 0)) for c in containers) > mem:
        problems.append("container memory reservations exceed the task's memory")
    for c in containers:
        lc = c.get("logConfiguration", {})
        if lc.get("logDriver") != "awslogs":
            problems.append(f"{c.get('name')}: expected the awslogs log driver")
            continue
        for opt in ("awslogs-group", "awslogs-region", "awslogs-stream-prefix"):
            if not lc.get("options", {}).get(opt):
                problems.append(f"{c.get('name')}: Fargate requires awslogs option {opt}")
    return problems


ALL_CHECKS = (
    check_shared_volume,
    check_app_waits_for_healthy_sidecar,
    check_sidecar_hardening,
    check_no_value_from_for_db_password,
    check_fargate,
    check_rds_iam,
)
