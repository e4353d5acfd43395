"""iam-policy.json: the task role may read the one database secret and nothing else.

The sidecar polls with DescribeSecret and fetches with GetSecretValue (issue 2); kms:Decrypt is
needed only when a customer-managed key encrypts the secret, and only through Secrets Manager.
"""

from __future__ import annotations

import copy
import json

import pytest

import placeholders
import task_checks as tc

SM_ACTIONS = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}


def as_list(v):
    return v if isinstance(v, list) else [v]


def check_policy(policy: dict, secret_arns: list[str]) -> list[str]:
    problems = []
    if policy.get("Version") != "2012-10-17":
        problems.append("Version must be 2012-10-17 (the older 2008 version has no policy variables)")
    statements = as_list(policy.get("Statement", []))
    granted: dict[str, list[str]] = {}
    for i, st in enumerate(statements):
        where = f"Statement[{i}] ({st.get('Sid', 'no Sid')})"
        if st.get("Effect") != "Allow":
            problems.append(f"{where}: expected Effect Allow, got {st.get('Effect')!r}")
        for key in ("NotAction", "NotResource", "Principal"):
            if key in st:
                problems.append(f"{where}: {key} has no place in a task-role identity policy")
        actions = as_list(st.get("Action", []))
        resources = as_list(st.get("Resource", []))
        for a in actions:
            if "*" in a:
                problems.append(f"{where}: wildcard action {a!r}")
            if a.startswith("secretsmanager:"):
                if a not in SM_ACTIONS:
                    problems.append(f"{where}: action {a!r} is more than the sidecar needs")
                wrong = [r for r in resources if r not in secret_arns]
                if wrong:
                    problems.append(f"{where}: {a} must be on the secret ARN only, also grants {wrong}")
                granted.setdefault(a, []).extend(resources)
            elif a == "kms:Decrypt":
                if not resources or any("*" in r for r in resources):
                    problems.append(f"{where}: kms:Decrypt must name the key, not {resources}")
                via = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                if via != "secretsmanager.<REGION>.amazonaws.com":
                    problems.append(f"{where}: kms:Decrypt needs kms:ViaService secretsmanager.<REGION>.amazonaws.com, has {via!r}")
            else:
                problems.append(f"{where}: unexpected action {a!r}")
    for a in sorted(SM_ACTIONS):
        if sorted(set(granted.get(a, []))) != sorted(secret_arns):
            problems.append(f"{a} must be granted on exactly {secret_arns}, is on {granted.get(a, [])}")
    return problems


def sidecar_secret_arns(task_def) -> list[str]:
    env = tc.env_of(tc.container(task_def, tc.SIDECAR))
    return [sid for _, sid, _ in tc.secret_specs(env["SIDECAR_SECRETS"])]


def test_policy_grants_exactly_what_the_sidecar_calls_on_its_secret(policy, task_def):
    arns = sidecar_secret_arns(task_def)
    assert arns == ["arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>"]
    assert check_policy(policy, arns) == []


def test_policy_actions(policy):
    actions = {a for st in policy["Statement"] for a in as_list(st["Action"])}
    assert actions == SM_ACTIONS | {"kms:Decrypt"}


def test_policy_is_valid_json_after_rendering(policy):
    rendered = json.loads(placeholders.render(json.dumps(policy)))
    assert placeholders.placeholders_in(json.dumps(rendered)) == set()


def _statement(policy, action):
    return next(st for st in policy["Statement"] if action in as_list(st["Action"]))


VIOLATIONS = [
    ("star-resource", lambda p: _statement(p, "secretsmanager:GetSecretValue").update(Resource="*"), "secret ARN only"),
    (
        "extra-resource",
        lambda p: _statement(p, "secretsmanager:GetSecretValue").update(
            Resource=[_statement(p, "secretsmanager:GetSecretValue")["Resource"], "arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:*"]
        ),
        "secret ARN only",
    ),
    ("wildcard-action", lambda p: _statement(p, "secretsmanager:GetSecretValue").update(Action="secretsmanager:*"), "wildcard action"),
    (
        "describe-missing",
        lambda p: _statement(p, "secretsmanager:GetSecretValue").update(Action=["secretsmanager:GetSecretValue"]),
        "secretsmanager:DescribeSecret must be granted",
    ),
    (
        "extra-sm-action",
        lambda p: _statement(p, "secretsmanager:GetSecretValue")["Action"].append("secretsmanager:PutSecretValue"),
        "more than the sidecar needs",
    ),
    ("deny-effect", lambda p: _statement(p, "secretsmanager:GetSecretValue").update(Effect="Deny"), "Effect Allow"),
    ("kms-no-condition", lambda p: _statement(p, "kms:Decrypt").pop("Condition"), "kms:ViaService"),
    ("kms-star", lambda p: _statement(p, "kms:Decrypt").update(Resource="*"), "must name the key"),
    ("not-resource", lambda p: _statement(p, "kms:Decrypt").update(NotResource="x"), "NotResource"),
    ("old-version", lambda p: p.update(Version="2008-10-17"), "2012-10-17"),
    ("other-service", lambda p: p["Statement"].append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "x"}), "unexpected action"),
]


@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_policy_check_catches(policy, task_def, mutate, phrase):
    bad = copy.deepcopy(policy)
    mutate(bad)
    problems = check_policy(bad, sidecar_secret_arns(task_def))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"
