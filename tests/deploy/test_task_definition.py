"""ecs-task-def.json and ecs-task-def.rds-iam.json: accepted by the ECS API's input model, and wired so
the sidecar works. Every test that takes `task_def` runs on both (conftest.py, deployments.py).

Three layers, each with negative controls proving the guard can fail:
1. shape: the file against RegisterTaskDefinition's input shape in botocore's ECS model;
2. relations: volume, mounts, dependsOn, health check, users, env (task_checks.py);
3. the sidecar's own parser: `secrets-sidecar check-config` on the container's environment.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from botocore.validate import ParamValidator

import placeholders
import shape_validator
import task_checks as tc
from deployments import DEPLOYMENTS

SHAPE = shape_validator.register_task_definition_input()
ROOT = Path(__file__).resolve().parents[2]
RDS_IAM = "rds-iam"
FAILOVER = "failover"


def containers(td):
    return {c["name"]: c for c in td["containerDefinitions"]}


# ---- 1. the shape ------------------------------------------------------------------------


def test_task_definition_matches_register_task_definition_input_shape(task_def):
    assert shape_validator.validate(task_def, SHAPE) == []


def test_rendered_task_definition_matches_the_shape_and_botocores_own_validator(task_def):
    rendered = json.loads(placeholders.render(json.dumps(task_def)))
    assert placeholders.placeholders_in(json.dumps(rendered)) == set()
    assert shape_validator.validate(rendered, SHAPE) == []
    report = ParamValidator().validate(rendered, SHAPE)
    assert not report.has_errors(), report.generate_report()


def _side(td):
    return containers(td)["secrets-sidecar"]


def _app(td):
    return containers(td)["app"]


def _set(path_fn, key, value):
    def mutate(td):
        path_fn(td)[key] = value

    return mutate


def _del(path_fn, key):
    def mutate(td):
        del path_fn(td)[key]

    return mutate


# (id, mutation, error the validator must report)
SHAPE_VIOLATIONS = [
    # unknown members, at the top, in a container, in a nested structure
    ("unknown-top", _set(lambda td: td, "familly", "x"), "$: unknown member 'familly'"),
    (
        "unknown-container-member",
        _set(_side, "healthcheck", {"command": ["CMD", "true"]}),
        "$.containerDefinitions[0]: unknown member 'healthcheck'",
    ),
    (
        "unknown-nested-member",
        _set(lambda td: _side(td)["healthCheck"], "startperiod", 30),
        "$.containerDefinitions[0].healthCheck: unknown member 'startperiod'",
    ),
    # wrong types, one per type the shape uses
    (
        "structure-as-string",
        _set(_side, "healthCheck", "CMD /secrets-sidecar healthcheck"),
        "$.containerDefinitions[0].healthCheck: expected a structure",
    ),
    (
        "list-as-object",
        _set(_side, "environment", {"SIDECAR_SECRETS": "db=x"}),
        "$.containerDefinitions[0].environment: expected a list",
    ),
    (
        "map-as-list",
        _set(lambda td: _side(td)["logConfiguration"], "options", [["awslogs-group", "/ecs/x"]]),
        "$.containerDefinitions[0].logConfiguration.options: expected a map",
    ),
    (
        "map-value-not-string",
        _set(lambda td: _side(td)["logConfiguration"]["options"], "awslogs-group", 5),
        "$.containerDefinitions[0].logConfiguration.options['awslogs-group']: expected a string",
    ),
    ("string-as-integer", _set(lambda td: td, "cpu", 1024), "$.cpu: expected a string"),
    (
        "integer-as-string",
        _set(lambda td: _side(td)["healthCheck"], "interval", "10"),
        "$.containerDefinitions[0].healthCheck.interval: expected an integer",
    ),
    ("integer-as-boolean", _set(_side, "cpu", True), "$.containerDefinitions[0].cpu: expected an integer"),
    (
        "boolean-as-string",
        _set(_side, "readonlyRootFilesystem", "true"),
        "$.containerDefinitions[0].readonlyRootFilesystem: expected a boolean",
    ),
    ("null-member", _set(_side, "essential", None), "$.containerDefinitions[0].essential: expected a boolean"),
    # enums
    ("enum-network-mode", _set(lambda td: td, "networkMode", "awsvpcx"), "$.networkMode: 'awsvpcx' is not one of"),
    (
        "enum-compatibility-case",
        _set(lambda td: td, "requiresCompatibilities", ["fargate"]),
        "$.requiresCompatibilities[0]: 'fargate' is not one of",
    ),
    (
        "enum-depends-on-condition",
        _set(lambda td: _app(td)["dependsOn"][0], "condition", "HEALTH"),
        "$.containerDefinitions[1].dependsOn[0].condition: 'HEALTH' is not one of",
    ),
    (
        "enum-log-driver",
        _set(lambda td: _side(td)["logConfiguration"], "logDriver", "cloudwatch"),
        "$.containerDefinitions[0].logConfiguration.logDriver: 'cloudwatch' is not one of",
    ),
    (
        "enum-cpu-architecture",
        _set(lambda td: td["runtimePlatform"], "cpuArchitecture", "AMD64"),
        "$.runtimePlatform.cpuArchitecture: 'AMD64' is not one of",
    ),
    # required members
    ("missing-family", _del(lambda td: td, "family"), "$: missing required member 'family'"),
    (
        "missing-container-definitions",
        _del(lambda td: td, "containerDefinitions"),
        "$: missing required member 'containerDefinitions'",
    ),
    (
        "missing-healthcheck-command",
        _del(lambda td: _side(td)["healthCheck"], "command"),
        "$.containerDefinitions[0].healthCheck: missing required member 'command'",
    ),
    (
        "missing-depends-on-condition",
        _del(lambda td: _app(td)["dependsOn"][0], "condition"),
        "$.containerDefinitions[1].dependsOn[0]: missing required member 'condition'",
    ),
    (
        "missing-log-driver",
        _del(lambda td: _side(td)["logConfiguration"], "logDriver"),
        "$.containerDefinitions[0].logConfiguration: missing required member 'logDriver'",
    ),
    (
        "list-above-max",
        _set(lambda td: td, "tags", [{"key": f"k{i}", "value": "v"} for i in range(51)]),
        "$.tags: list length 51 is above the model's max 50",
    ),
]


@pytest.mark.parametrize("mutate, expected", [v[1:] for v in SHAPE_VIOLATIONS], ids=[v[0] for v in SHAPE_VIOLATIONS])
def test_shape_validator_rejects(task_def, mutate, expected):
    assert _side(task_def)["name"] == "secrets-sidecar", "the paths above assume the sidecar comes first"
    bad = copy.deepcopy(task_def)
    mutate(bad)
    errors = shape_validator.validate(bad, SHAPE)
    assert any(e.startswith(expected) for e in errors), f"expected {expected!r} among {errors}"


def test_shape_validator_refuses_shape_types_it_does_not_know():
    # A future model change to a timestamp/blob member must fail loudly, not pass unchecked.
    ts = SHAPE.members["containerDefinitions"].member.members["name"]
    fake = copy.copy(ts)
    fake.type_name = "timestamp"
    assert shape_validator.validate("2024-01-01", fake) == [
        "$: shape type 'timestamp' (String) is not supported by this validator"
    ]


# ---- 2. relations -------------------------------------------------------------------------


@pytest.mark.parametrize("check", tc.ALL_CHECKS, ids=lambda c: c.__name__)
def test_relation_holds(task_def, check):
    assert check(task_def) == []


def test_healthcheck_is_the_binarys_healthcheck_subcommand_within_ecs_limits(task_def, entrypoint):
    assert entrypoint == "/secrets-sidecar"
    assert tc.check_healthcheck(task_def, entrypoint) == []


def test_healthcheck_and_user_are_those_of_the_image(task_def, image_config):
    """The task definition's health check is the image's HEALTHCHECK, which tests/image runs green and red,
    and its uid owns the image's /secrets (tests/image lists it)."""
    side = tc.container(task_def, tc.SIDECAR)
    assert side["healthCheck"]["command"] == image_config["Healthcheck"]["Test"]
    assert side["user"].partition(":")[0] == image_config["Config"]["User"].partition(":")[0] == str(tc.SIDECAR_UID)


def test_app_env_names_the_file_url_and_token_the_sidecar_produces(task_def, image_env):
    assert tc.check_app_points_at_sidecar(task_def, image_env) == []


def test_sidecar_user_and_readonly_root(task_def):
    side = _side(task_def)
    assert side["user"] == "65532:1000"
    assert side["readonlyRootFilesystem"] is True
    assert side["essential"] is True


def _mount(td, name):
    return tc.mount(containers(td)[name])


def _hc(td):
    return _side(td)["healthCheck"]


def _env_set(name_fn, key, value):
    def mutate(td):
        c = name_fn(td)
        for e in c["environment"]:
            if e["name"] == key:
                e["value"] = value
                return
        c["environment"].append({"name": key, "value": value})

    return mutate


def _env_del(name_fn, key):
    def mutate(td):
        c = name_fn(td)
        c["environment"] = [e for e in c["environment"] if e["name"] != key]

    return mutate


def _rename_entry(new_name):
    """SIDECAR_SECRETS's entry under another name, whatever its kind."""

    def mutate(td):
        old = tc.env_of(_side(td))["SIDECAR_SECRETS"]
        _env_set(_side, "SIDECAR_SECRETS", f"{new_name}={old.partition('=')[2]}")(td)

    return mutate


# (id, check, mutation, a phrase of the problem it must report)
RELATION_VIOLATIONS = [
    ("app-mount-rw", tc.check_shared_volume, _set(lambda td: _mount(td, "app"), "readOnly", False), "read-only"),
    ("app-mount-missing", tc.check_shared_volume, _set(_app, "mountPoints", []), "app does not mount"),
    ("sidecar-mount-ro", tc.check_shared_volume, _set(lambda td: _mount(td, "secrets-sidecar"), "readOnly", True), "read-write"),
    (
        "sidecar-mount-path",
        tc.check_shared_volume,
        _set(lambda td: _mount(td, "secrets-sidecar"), "containerPath", "/run/secrets"),
        "not /secrets",
    ),
    (
        "host-volume",
        tc.check_shared_volume,
        _set(lambda td: td["volumes"][0], "host", {"sourcePath": "/tmp"}),
        "task-scoped",
    ),
    ("no-volume", tc.check_shared_volume, _set(lambda td: td, "volumes", []), "exactly one task volume"),
    (
        "depends-on-start",
        tc.check_app_waits_for_healthy_sidecar,
        _set(lambda td: _app(td)["dependsOn"][0], "condition", "START"),
        "HEALTHY",
    ),
    ("no-depends-on", tc.check_app_waits_for_healthy_sidecar, _del(_app, "dependsOn"), "HEALTHY"),
    ("readonly-root-off", tc.check_sidecar_hardening, _set(_side, "readonlyRootFilesystem", False), "readonlyRootFilesystem"),
    ("not-essential", tc.check_sidecar_hardening, _set(_side, "essential", False), "essential"),
    ("root-user", tc.check_sidecar_hardening, _set(_side, "user", "0"), "uid 65532"),
    ("sidecar-own-group", tc.check_sidecar_hardening, _set(_side, "user", "65532:65532"), "gid 1000"),
    ("named-user", tc.check_sidecar_hardening, _set(_side, "user", "nonroot"), "numeric"),
    ("app-other-group", tc.check_sidecar_hardening, _set(_app, "user", "1000:2000"), "gid 2000"),
    (
        "value-from-db-arn",
        tc.check_no_value_from_for_db_password,
        _set(
            _app,
            "secrets",
            [
                {
                    "name": "DB_PASSWORD",
                    "valueFrom": "arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>:password::",
                }
            ],
        ),
        "valueFrom",
    ),
    (
        "value-from-other-password",
        tc.check_no_value_from_for_db_password,
        _set(_app, "secrets", [{"name": "DATABASE_PASSWORD", "valueFrom": "arn:aws:ssm:<REGION>:<ACCOUNT_ID>:parameter/db"}]),
        "DATABASE_PASSWORD",
    ),
    ("awslogs-missing-prefix", tc.check_fargate, _del(lambda td: _side(td)["logConfiguration"]["options"], "awslogs-stream-prefix"), "awslogs-stream-prefix"),
    ("bridge-network", tc.check_fargate, _set(lambda td: td, "networkMode", "bridge"), "awsvpc"),
    ("bad-fargate-size", tc.check_fargate, _set(lambda td: td, "memory", "1000"), "not a Fargate combination"),
    ("reservations-too-big", tc.check_fargate, _set(_app, "cpu", 2048), "cpu reservations"),
]


@pytest.mark.parametrize(
    "check, mutate, phrase", [v[1:] for v in RELATION_VIOLATIONS], ids=[v[0] for v in RELATION_VIOLATIONS]
)
def test_relation_check_catches(task_def, check, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = check(bad)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


HEALTHCHECK_VIOLATIONS = [
    ("shell-form", _set(_hc, "command", ["CMD-SHELL", "/secrets-sidecar healthcheck"]), "command must be"),
    ("wrong-subcommand", _set(_hc, "command", ["CMD", "/secrets-sidecar", "--healthcheck"]), "command must be"),
    ("wrong-binary-path", _set(_hc, "command", ["CMD", "/usr/local/bin/secrets-sidecar", "healthcheck"]), "command must be"),
    ("interval-below", _set(_hc, "interval", 4), "interval"),
    ("interval-above", _set(_hc, "interval", 301), "interval"),
    ("timeout-below", _set(_hc, "timeout", 1), "timeout"),
    ("timeout-not-above-probe", _set(_hc, "timeout", 2), "probe's own 2 s"),
    ("timeout-above", _set(_hc, "timeout", 61), "timeout"),
    ("retries-zero", _set(_hc, "retries", 0), "retries"),
    ("retries-above", _set(_hc, "retries", 11), "retries"),
    ("start-period-above", _set(_hc, "startPeriod", 301), "startPeriod"),
    ("start-period-missing", _del(_hc, "startPeriod"), "startPeriod"),
    ("no-healthcheck", _del(_side, "healthCheck"), "no healthCheck"),
]


@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in HEALTHCHECK_VIOLATIONS], ids=[v[0] for v in HEALTHCHECK_VIOLATIONS])
def test_healthcheck_check_catches(task_def, entrypoint, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = tc.check_healthcheck(bad, entrypoint)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


APP_ENV_VIOLATIONS = [
    ("file-name", _env_set(_app, "SECRETS_SIDECAR_FILE", "/secrets/database.json"), "SECRETS_SIDECAR_FILE"),
    ("url-port", _env_set(_app, "SECRETS_SIDECAR_URL", "http://127.0.0.1:2774/v1/secrets/db"), "SECRETS_SIDECAR_URL"),
    ("token-file", _env_set(_app, "SECRETS_SIDECAR_TOKEN_FILE", "/secrets/token"), "SECRETS_SIDECAR_TOKEN_FILE"),
    # The sidecar changes, the app does not follow.
    ("sidecar-listen-moved", _env_set(_side, "SIDECAR_LISTEN", "127.0.0.1:2999"), "SECRETS_SIDECAR_URL"),
    ("secret-renamed", _rename_entry("primary"), "SECRETS_SIDECAR_FILE"),
    ("output-dir-moved", _env_set(_side, "SIDECAR_OUTPUT_DIR", "/var/secrets"), "writes to /var/secrets"),
]


@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in APP_ENV_VIOLATIONS], ids=[v[0] for v in APP_ENV_VIOLATIONS])
def test_app_env_check_catches(task_def, image_env, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = tc.check_app_points_at_sidecar(bad, image_env)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def _entry(value):
    return _env_set(_side, "SIDECAR_SECRETS", value)


# What the rds-iam variant adds: a well-formed entry, and the CA bundle the app verifies the server with.
RDS_IAM_VIOLATIONS = [
    ("no-ca-file", _env_del(_app, tc.CA_FILE_VAR), "has no SECRETS_SIDECAR_CA_FILE"),
    ("ca-file-relative", _env_set(_app, tc.CA_FILE_VAR, "rds-ca/global-bundle.pem"), "absolute path"),
    ("ca-file-on-the-volume", _env_set(_app, tc.CA_FILE_VAR, "/secrets/global-bundle.pem"), "hides the app image's files"),
    ("port-not-numeric", _entry("db=rds-iam://<DB_USER>@<DB_HOST>:mysql"), "port must be a number"),
    ("port-zero", _entry("db=rds-iam://<DB_USER>@<DB_HOST>:0"), "port must be a number"),
    ("port-too-big", _entry("db=rds-iam://<DB_USER>@<DB_HOST>:65536"), "port must be a number"),
    ("port-missing", _entry("db=rds-iam://<DB_USER>@<DB_HOST>"), "port must be a number"),
    ("no-user", _entry("db=rds-iam://<DB_HOST>:<DB_PORT>"), "names no user"),
    ("no-host", _entry("db=rds-iam://<DB_USER>@:<DB_PORT>"), "names no host"),
    ("unknown-option", _entry("db=rds-iam://<DB_USER>@<DB_HOST>:<DB_PORT>?format=raw"), "unknown option"),
]


@pytest.mark.parametrize("deployment", [RDS_IAM])
@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in RDS_IAM_VIOLATIONS], ids=[v[0] for v in RDS_IAM_VIOLATIONS])
def test_rds_iam_check_catches(task_def, mutate, phrase):
    assert tc.check_rds_iam(task_def) == []
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = tc.check_rds_iam(bad)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def load_task_def(deployment: str) -> dict:
    return json.loads((ROOT / DEPLOYMENTS[deployment].task_def).read_text())


def _diff(a, b, path="$") -> list[str]:
    """The paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(a.keys() | b.keys()) for p in _diff(a.get(k, ...), b.get(k, ...), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def check_rds_iam_variant(base: dict, variant: dict) -> list[str]:
    """The rds-iam task definition is the Secrets Manager one with two changes only: SIDECAR_SECRETS
    holds rds-iam:// entries (and nothing else), and the app gets SECRETS_SIDECAR_CA_FILE."""
    problems = []
    secrets = tc.env_of(_side(variant)).get("SIDECAR_SECRETS", "")
    if not tc.rds_iam_entries(secrets) or len(tc.rds_iam_entries(secrets)) != len(tc.secret_specs(secrets)):
        problems.append(f"SIDECAR_SECRETS must hold rds-iam:// entries only (its policy grants no Secrets Manager access), is {secrets!r}")
    if tc.CA_FILE_VAR not in tc.env_of(_app(variant)):
        problems.append(f"the app must get {tc.CA_FILE_VAR}")
    undone = copy.deepcopy(variant)
    _env_set(_side, "SIDECAR_SECRETS", tc.env_of(_side(base))["SIDECAR_SECRETS"])(undone)
    _env_del(_app, tc.CA_FILE_VAR)(undone)
    diff = _diff(base, undone)
    if diff:
        problems.append(f"differs from the Secrets Manager task definition in more than the entry and the CA file: {diff}")
    return problems


@pytest.mark.parametrize("deployment", [RDS_IAM])
def test_the_rds_iam_variant_changes_only_the_entry_and_the_ca_file(task_def):
    assert check_rds_iam_variant(load_task_def("secrets-manager"), task_def) == []


RDS_IAM_VARIANT_VIOLATIONS = [
    (
        "still-a-secret",
        _entry("db=arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>"),
        "rds-iam:// entries only",
    ),
    (
        "secret-beside-the-token",
        _entry("db=rds-iam://<DB_USER>@<DB_HOST>:<DB_PORT>,other=arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:other"),
        "rds-iam:// entries only",
    ),
    ("no-ca-file", _env_del(_app, tc.CA_FILE_VAR), "SECRETS_SIDECAR_CA_FILE"),
    ("family-changed", _set(lambda td: td, "family", "rails-app-iam"), "$.family"),
    ("sidecar-env-added", _env_set(_side, "SIDECAR_LOG", "debug"), "$.containerDefinitions[0].environment"),
    ("app-user-changed", _set(_app, "user", "1000:2000"), "$.containerDefinitions[1].user"),
]


@pytest.mark.parametrize("deployment", [RDS_IAM])
@pytest.mark.parametrize(
    "mutate, phrase", [v[1:] for v in RDS_IAM_VARIANT_VIOLATIONS], ids=[v[0] for v in RDS_IAM_VARIANT_VIOLATIONS]
)
def test_rds_iam_variant_check_catches(task_def, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = check_rds_iam_variant(load_task_def("secrets-manager"), bad)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def check_failover_variant(base: dict, variant: dict) -> list[str]:
    """The failover task definition is the Secrets Manager one with one line more: SIDECAR_FAILOVER_REGION
    in the sidecar's environment (docs/failover.md)."""
    problems = []
    region = tc.env_of(_side(variant)).get("SIDECAR_FAILOVER_REGION")
    if region != "<FAILOVER_REGION>":
        problems.append(f"SIDECAR_FAILOVER_REGION must be <FAILOVER_REGION>, is {region!r}")
    undone = copy.deepcopy(variant)
    _env_del(_side, "SIDECAR_FAILOVER_REGION")(undone)
    diff = _diff(base, undone)
    if diff:
        problems.append(f"differs from the Secrets Manager task definition in more than SIDECAR_FAILOVER_REGION: {diff}")
    return problems


@pytest.mark.parametrize("deployment", [FAILOVER])
def test_the_failover_variant_adds_only_the_failover_region(task_def):
    assert check_failover_variant(load_task_def("secrets-manager"), task_def) == []


FAILOVER_VARIANT_VIOLATIONS = [
    ("no-failover-region", _env_del(_side, "SIDECAR_FAILOVER_REGION"), "SIDECAR_FAILOVER_REGION must be"),
    ("another-secret", _entry("db=arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:other"), "$.containerDefinitions[0].environment"),
    ("sidecar-env-added", _env_set(_side, "SIDECAR_LOG", "debug"), "$.containerDefinitions[0].environment"),
    ("app-user-changed", _set(_app, "user", "1000:2000"), "$.containerDefinitions[1].user"),
]


@pytest.mark.parametrize("deployment", [FAILOVER])
@pytest.mark.parametrize(
    "mutate, phrase", [v[1:] for v in FAILOVER_VARIANT_VIOLATIONS], ids=[v[0] for v in FAILOVER_VARIANT_VIOLATIONS]
)
def test_failover_variant_check_catches(task_def, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = check_failover_variant(load_task_def("secrets-manager"), bad)
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


# ---- 3. the sidecar's own config parser ---------------------------------------------------


def container_environment(td: dict, image_env: dict[str, str]) -> dict[str, str]:
    """What ECS hands the sidecar process, placeholders filled in as a user would: the image's
    ENV, then the task definition's environment on top, then what Fargate itself adds."""
    rendered = json.loads(placeholders.render(json.dumps(td)))
    region = placeholders.EXAMPLE_VALUES["<REGION>"]
    return {**image_env, **tc.env_of(_side(rendered)), "AWS_REGION": region, "AWS_DEFAULT_REGION": region}


def run_check_config(sidecar_bin: str, container_env: dict[str, str]) -> subprocess.CompletedProcess:
    # The test machine's own SIDECAR_* must not leak in: only the container's count.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "AWS_"))}
    # check-config must never call AWS. Should it try anyway, the SDK is pointed at a local
    # socket that records the attempt, and IMDS (a non-loopback address) is switched off.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        endpoint = f"http://127.0.0.1:{trap.getsockname()[1]}"
        guard = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "not-a-real-key",
        }
        proc = subprocess.run(
            [sidecar_bin, "check-config"],
            env={**base, **guard, **container_env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        try:
            conn, _ = trap.accept()
            conn.close()
            pytest.fail("check-config connected to the Secrets Manager endpoint; it must never call AWS")
        except BlockingIOError:
            pass
    return proc


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_sidecar_environment_passes_the_sidecars_own_check_config(deployment, task_def, image_env, sidecar_bin):
    env = container_environment(task_def, image_env)
    expected = {"SIDECAR_SECRETS", "SIDECAR_OUTPUT_DIR"} | ({"SIDECAR_FAILOVER_REGION"} if deployment == FAILOVER else set())
    assert {k for k in env if k.startswith("SIDECAR_")} == expected
    proc = run_check_config(sidecar_bin, env)
    assert proc.returncode == 0, describe(proc)
    # Each Secrets Manager secret with a failover Region is shown with the replica it reads: the ARN with the
    # Region replaced, which is what iam-policy.failover.json grants.
    for name, region in tc.failover_regions(env).items():
        arn = dict((n, sid) for n, sid, _ in tc.secret_specs(env["SIDECAR_SECRETS"]))[name]
        shown = f"failover to {tc.replica_arn(arn, region)} in {region})"
        assert re.search(rf"^secret {re.escape(name)}: .*{re.escape(shown)}", proc.stdout, re.M), describe(proc)
    # The summary shows where the sidecar will write and listen; both containers mount the
    # volume at the same path, so it must show exactly what the app was told to read.
    app_env = tc.env_of(_app(task_def))
    assert app_env["SECRETS_SIDECAR_FILE"] in proc.stdout, describe(proc)
    assert app_env["SECRETS_SIDECAR_URL"].split("/")[2] in proc.stdout, describe(proc)
    # An rds-iam:// entry is a token to sign, listed as such, never taken for a Secrets Manager secret id.
    for e in tc.rds_iam_entries(env["SIDECAR_SECRETS"]):
        assert not re.search(rf"^secret {re.escape(e.name)}: ", proc.stdout, re.M), (
            f"check-config took the rds-iam:// entry {e.name!r} for a Secrets Manager secret id\n{describe(proc)}"
        )
        endpoint, file = re.escape(f"{e.user}@{e.host}:{e.port}"), re.escape(app_env["SECRETS_SIDECAR_FILE"])
        assert re.search(rf"^rds-iam {re.escape(e.name)}: .*\b{endpoint}\b.* -> {file}$", proc.stdout, re.M), describe(proc)


ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-0f1e2d3c-AbCdEf"
BAD_ENVS = [
    # (id, variable, value, text the error must name)
    ("secrets-missing-equals", "SIDECAR_SECRETS", "db:" + ARN, "db:" + ARN),
    ("secrets-duplicate-name", "SIDECAR_SECRETS", f"db={ARN},db={ARN}", "db"),
    ("secrets-empty", "SIDECAR_SECRETS", "", "SIDECAR_SECRETS"),
    ("secrets-bad-name", "SIDECAR_SECRETS", f"../db={ARN}", "../db"),
    ("listen-not-loopback", "SIDECAR_LISTEN", "0.0.0.0:2773", "0.0.0.0"),
    ("failover-region-malformed", "SIDECAR_FAILOVER_REGION", "EU_CENTRAL_1", "EU_CENTRAL_1"),
    # The secret's own Region, or (rds-iam) a flag for entries that have no replica: exit 2 either way.
    ("failover-region-its-own", "SIDECAR_FAILOVER_REGION", placeholders.EXAMPLE_VALUES["<REGION>"], "--failover-region"),
]
# A malformed rds-iam:// entry exits 2 naming it, like every entry.
HOST = placeholders.EXAMPLE_VALUES["<DB_HOST>"]
BAD_ENVS += [
    ("rds-iam-no-port", "SIDECAR_SECRETS", f"db=rds-iam://app@{HOST}", f"rds-iam://app@{HOST}"),
    ("rds-iam-port-not-numeric", "SIDECAR_SECRETS", f"db=rds-iam://app@{HOST}:mysql", f"{HOST}:mysql"),
    ("rds-iam-port-zero", "SIDECAR_SECRETS", f"db=rds-iam://app@{HOST}:0", f"{HOST}:0"),
    ("rds-iam-no-user", "SIDECAR_SECRETS", f"db=rds-iam://{HOST}:3306", f"rds-iam://{HOST}:3306"),
    ("rds-iam-no-host", "SIDECAR_SECRETS", "db=rds-iam://app@:3306", "rds-iam://app@:3306"),
    ("rds-iam-unknown-option", "SIDECAR_SECRETS", f"db=rds-iam://app@{HOST}:3306?format=raw", "format=raw"),
]


@pytest.mark.parametrize("var, value, named", [b[1:] for b in BAD_ENVS], ids=[b[0] for b in BAD_ENVS])
def test_check_config_rejects_a_broken_sidecar_environment(task_def, image_env, sidecar_bin, var, value, named):
    env = {**container_environment(task_def, image_env), var: value}
    proc = run_check_config(sidecar_bin, env)
    assert proc.returncode == 2, describe(proc)
    assert named in proc.stdout + proc.stderr, f"the message should name {named!r}\n{describe(proc)}"


def test_check_config_rejects_the_task_definition_with_its_placeholders_left_in(task_def, image_env, sidecar_bin):
    # `<` and `>` are in no secret name or ARN, host name or port: a task registered without filling in
    # <REGION>/<ACCOUNT_ID>/<RDS_SECRET_SUFFIX> (or <DB_USER>/<DB_HOST>/<DB_PORT>) fails fast at start
    # (exit 2), before any AWS call, and the message names the value.
    raw_env = {**image_env, **tc.env_of(_side(task_def))}
    left_in = placeholders.placeholders_in(raw_env["SIDECAR_SECRETS"])
    assert left_in
    proc = run_check_config(sidecar_bin, raw_env)
    assert proc.returncode == 2, describe(proc)
    assert all(p in proc.stderr for p in left_in), describe(proc)
