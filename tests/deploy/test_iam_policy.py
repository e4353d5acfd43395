"""iam-policy.json: the task role may read the one database secret and nothing else.

The sidecar polls with DescribeSecret and fetches with GetSecretValue (docs/ecs.md, the task role);
kms:Decrypt is needed only when a customer-managed key encrypts the secret, and only through Secrets Manager.

iam-policy.failover.json: the same, and the same actions on the secret's replica — its ARN with the Region
replaced — with kms:Decrypt on the key of the replica's Region, through Secrets Manager there: a key is
regional, and the replica is encrypted with one of its own Region (docs/failover.md).

iam-policy.rds-iam.json: the task role may connect as the one database user the sidecar signs tokens
for, nothing else. Signing is local: no Secrets Manager, no KMS, no RDS API call. The
resource is `dbuser:<DB_RESOURCE_ID>/<DB_USER>`: the DbiResourceId of an instance, the
DbClusterResourceId of an Aurora cluster, or a proxy's prx-… id (docs/rds-iam.md).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

import placeholders
import task_checks as tc

ROOT = Path(__file__).resolve().parents[2]

SM = "secrets-manager"
FAILOVER = "failover"
RDS_IAM = "rds-iam"
SM_ACTIONS = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
RDS_DB_CONNECT = "rds-db:connect"
POLICY_ACTIONS = {SM: SM_ACTIONS | {"kms:Decrypt"}, FAILOVER: SM_ACTIONS | {"kms:Decrypt"}, RDS_IAM: {RDS_DB_CONNECT}}
# The Region the task runs in: Fargate sets AWS_REGION to it, and the policy names it so.
TASK_REGION = "<REGION>"
KMS_KEY_ARN = re.compile(r"arn:aws:kms:(?P<region>[^:]+):[^:]+:key/.+")
DBUSER_ARN = re.compile(r"arn:aws:rds-db:(?P<region>[^:]+):(?P<account>[^:]+):dbuser:(?P<resource_id>[^/]+)/(?P<user>[^/]+)")
# An instance's DbiResourceId (db-…), an Aurora cluster's DbClusterResourceId (cluster-…), a proxy's
# id (prx-…); not the instance's or cluster's name, which IAM would take without complaint.
RESOURCE_ID = re.compile(r"<DB_RESOURCE_ID>|(?:db|cluster|prx)-[A-Za-z0-9]+")


def only(deployment: str):
    """Run a test on one deployment's files only (overrides conftest's `deployment` fixture)."""
    return pytest.mark.parametrize("deployment", [deployment])


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(policy: dict):
    """(where, statement, actions, resources) for each statement."""
    for i, st in enumerate(as_list(policy.get("Statement", []))):
        where = f"Statement[{i}] ({st.get('Sid', 'no Sid')})"
        yield where, st, as_list(st.get("Action", [])), as_list(st.get("Resource", []))


def check_statements(policy: dict) -> list[str]:
    """What every task-role policy here is: the current Version, and statements that Allow named
    actions on named resources (no Not*, no Principal, no wildcard action)."""
    problems = []
    if policy.get("Version") != "2012-10-17":
        problems.append("Version must be 2012-10-17 (the older 2008 version has no policy variables)")
    for where, st, actions, _ in statements(policy):
        if st.get("Effect") != "Allow":
            problems.append(f"{where}: expected Effect Allow, got {st.get('Effect')!r}")
        for key in ("NotAction", "NotResource", "Principal"):
            if key in st:
                problems.append(f"{where}: {key} has no place in a task-role identity policy")
        for a in actions:
            if "*" in a:
                problems.append(f"{where}: wildcard action {a!r}")
    return problems


def via(region: str) -> str:
    return f"secretsmanager.{region}.amazonaws.com"


def check_policy(policy: dict, secret_arns: list[str], regions: list[str]) -> list[str]:
    """The Secrets Manager actions on exactly `secret_arns`, and kms:Decrypt through Secrets Manager in
    each of `regions` (where the sidecar reads: the task's, and a replica's) and nowhere else."""
    problems = check_statements(policy)
    granted: dict[str, list[str]] = {}
    decrypt_via: list[str] = []
    for where, st, actions, resources in statements(policy):
        for a in actions:
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
                service = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                if service not in [via(r) for r in regions]:
                    problems.append(f"{where}: kms:Decrypt needs kms:ViaService {' or '.join(via(r) for r in regions)}, has {service!r}")
                decrypt_via.append(service)
            else:
                problems.append(f"{where}: unexpected action {a!r}")
    for a in sorted(SM_ACTIONS):
        if sorted(set(granted.get(a, []))) != sorted(secret_arns):
            problems.append(f"{a} must be granted on exactly {secret_arns}, is on {granted.get(a, [])}")
    for r in regions:
        if via(r) not in decrypt_via:
            problems.append(f"no kms:Decrypt through {via(r)}: the secret's copy in {r} is encrypted with a key of that Region")
    return problems


def check_kms_key_regions(rendered_policy: dict) -> list[str]:
    """After rendering (the placeholders filled in): each key is in the Region of the Secrets Manager it is
    decrypted through. A key of another Region cannot decrypt the copy there, so the grant would be dead
    and that copy unreadable."""
    problems = []
    for where, st, actions, resources in statements(rendered_policy):
        if "kms:Decrypt" not in actions:
            continue
        service = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", "")
        for key in resources:
            m = KMS_KEY_ARN.fullmatch(key)
            if m is None or service != via(m["region"]):
                problems.append(f"{where}: the key {key} is not in the Region of {service}")
    return problems


def check_rds_iam_policy(policy: dict, dbuser_arns: list[str]) -> list[str]:
    problems = check_statements(policy)
    granted: list[str] = []
    for where, st, actions, resources in statements(policy):
        for a in actions:
            if a != RDS_DB_CONNECT:
                problems.append(f"{where}: unexpected action {a!r} (the sidecar signs tokens locally and calls no AWS API)")
                continue
            for r in resources:
                m = DBUSER_ARN.fullmatch(r)
                if m is None or "*" in r or "?" in r:
                    problems.append(
                        f"{where}: {a} must name one dbuser ARN without wildcards "
                        f"(arn:aws:rds-db:REGION:ACCOUNT_ID:dbuser:RESOURCE_ID/USER), not {r!r}"
                    )
                elif not RESOURCE_ID.fullmatch(m["resource_id"]):
                    problems.append(f"{where}: {m['resource_id']!r} is not a resource id (db-…, cluster-… or prx-…), not the database's name")
                elif r not in dbuser_arns:
                    problems.append(f"{where}: {a} as user {m['user']!r} in {m['region']} is not a token the sidecar signs ({dbuser_arns})")
            granted.extend(resources)
    if sorted(set(granted)) != sorted(dbuser_arns):
        problems.append(f"{RDS_DB_CONNECT} must be granted on exactly {dbuser_arns}, is on {granted}")
    return problems


def sidecar_secret_arns(task_def) -> list[str]:
    """Every ARN the sidecar reads: each entry's, and its replica's where it has a failover Region."""
    env = tc.env_of(tc.container(task_def, tc.SIDECAR))
    replicas = tc.failover_regions(env)
    arns = []
    for name, sid, _ in tc.secret_specs(env["SIDECAR_SECRETS"]):
        arns.append(sid)
        if name in replicas:
            arns.append(tc.replica_arn(sid, replicas[name]))
    return arns


def sidecar_regions(task_def) -> list[str]:
    """The Regions the sidecar reads in: the task's, and every failover Region."""
    env = tc.env_of(tc.container(task_def, tc.SIDECAR))
    return [TASK_REGION] + sorted(set(tc.failover_regions(env).values()))


def sidecar_dbuser_arns(task_def) -> list[str]:
    """The dbuser ARN of each rds-iam:// entry: its user, in its region (the task's unless `region=`)."""
    env = tc.env_of(tc.container(task_def, tc.SIDECAR))
    return [
        f"arn:aws:rds-db:{e.options.get('region', '<REGION>')}:<ACCOUNT_ID>:dbuser:<DB_RESOURCE_ID>/{e.user}"
        for e in tc.rds_iam_entries(env["SIDECAR_SECRETS"])
    ]


SECRET_ARN = "arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>"
REPLICA_ARN = "arn:aws:secretsmanager:<FAILOVER_REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>"
READS = {SM: ([SECRET_ARN], [TASK_REGION]), FAILOVER: ([SECRET_ARN, REPLICA_ARN], [TASK_REGION, "<FAILOVER_REGION>"])}


@pytest.mark.parametrize("deployment", [SM, FAILOVER])
def test_policy_grants_exactly_what_the_sidecar_calls_on_its_secret(deployment, policy, task_def):
    arns, regions = sidecar_secret_arns(task_def), sidecar_regions(task_def)
    assert (arns, regions) == READS[deployment]
    assert check_policy(policy, arns, regions) == []
    assert check_kms_key_regions(render(policy)) == []


@only(RDS_IAM)
def test_rds_iam_policy_grants_exactly_connect_as_the_user_the_sidecar_signs_for(policy, task_def):
    arns = sidecar_dbuser_arns(task_def)
    assert arns == ["arn:aws:rds-db:<REGION>:<ACCOUNT_ID>:dbuser:<DB_RESOURCE_ID>/<DB_USER>"]
    # This policy grants no Secrets Manager access: every entry must be a token.
    assert len(arns) == len(sidecar_secret_arns(task_def))
    assert check_rds_iam_policy(policy, arns) == []


@only(RDS_IAM)
def test_rds_iam_policys_dbuser_is_the_entrys_user_as_written_and_as_registered(policy, task_def):
    for pol, td in ((policy, task_def), (render(policy), render(task_def))):
        env = tc.env_of(tc.container(td, tc.SIDECAR))
        entry_users = [e.user for e in tc.rds_iam_entries(env["SIDECAR_SECRETS"])]
        policy_users = [DBUSER_ARN.fullmatch(r)["user"] for _, _, _, resources in statements(pol) for r in resources]
        assert policy_users == entry_users != []
    assert entry_users == [placeholders.EXAMPLE_VALUES["<DB_USER>"]]


def render(doc: dict) -> dict:
    return json.loads(placeholders.render(json.dumps(doc)))


def test_policy_actions(deployment, policy):
    actions = {a for st in policy["Statement"] for a in as_list(st["Action"])}
    assert actions == POLICY_ACTIONS[deployment]


def test_policy_is_valid_json_after_rendering(policy):
    rendered = render(policy)
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


@only(SM)
@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_policy_check_catches(policy, task_def, mutate, phrase):
    bad = copy.deepcopy(policy)
    mutate(bad)
    problems = check_policy(bad, sidecar_secret_arns(task_def), sidecar_regions(task_def))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def _sm_statement(p):
    return _statement(p, "secretsmanager:GetSecretValue")


def _replica_key(p):
    return next(st for st in p["Statement"] if st.get("Resource") == "<REPLICA_KMS_KEY_ARN>")


FAILOVER_VIOLATIONS = [
    ("replica-arn-missing", lambda p: _sm_statement(p).update(Resource=SECRET_ARN), "must be granted on exactly"),
    (
        "any-region",
        lambda p: _sm_statement(p).update(Resource=[SECRET_ARN, SECRET_ARN.replace("<REGION>", "*")]),
        "secret ARN only",
    ),
    (
        "replica-in-another-region",
        lambda p: _sm_statement(p).update(Resource=[SECRET_ARN, REPLICA_ARN.replace("<FAILOVER_REGION>", "us-east-1")]),
        "secret ARN only",
    ),
    ("replica-key-missing", lambda p: p["Statement"].remove(_replica_key(p)), "no kms:Decrypt through secretsmanager.<FAILOVER_REGION>"),
    (
        "replica-key-through-another-region",
        lambda p: _replica_key(p)["Condition"]["StringEquals"].update({"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}),
        "kms:ViaService",
    ),
    ("replica-key-any-key", lambda p: _replica_key(p).update(Resource="*"), "must name the key"),
]


@only(FAILOVER)
@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in FAILOVER_VIOLATIONS], ids=[v[0] for v in FAILOVER_VIOLATIONS])
def test_failover_policy_check_catches(policy, task_def, mutate, phrase):
    bad = copy.deepcopy(policy)
    mutate(bad)
    problems = check_policy(bad, sidecar_secret_arns(task_def), sidecar_regions(task_def))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


@only(FAILOVER)
def test_a_policy_that_covers_a_failover_the_task_does_not_use_grants_too_much(policy):
    base = json.loads((ROOT / "ecs-task-def.json").read_text())
    problems = check_policy(policy, sidecar_secret_arns(base), sidecar_regions(base))
    assert any("secret ARN only" in p for p in problems), problems
    # ... and the task definition with failover is not covered by the policy without it.
    task_def = json.loads((ROOT / "ecs-task-def.failover.json").read_text())
    base_policy = json.loads((ROOT / "iam-policy.json").read_text())
    problems = check_policy(base_policy, sidecar_secret_arns(task_def), sidecar_regions(task_def))
    assert any("must be granted on exactly" in p for p in problems), problems
    assert any("no kms:Decrypt through secretsmanager.<FAILOVER_REGION>" in p for p in problems), problems


@only(FAILOVER)
def test_kms_key_region_check_catches_the_keys_swapped(policy):
    bad = copy.deepcopy(policy)
    keys = [st for st in bad["Statement"] if "kms:Decrypt" in as_list(st["Action"])]
    keys[0]["Resource"], keys[1]["Resource"] = keys[1]["Resource"], keys[0]["Resource"]
    problems = check_kms_key_regions(render(bad))
    assert len(problems) == 2 and all("is not in the Region of" in p for p in problems), problems


DBUSER = "arn:aws:rds-db:<REGION>:<ACCOUNT_ID>:dbuser:<DB_RESOURCE_ID>/<DB_USER>"


def _connect(policy):
    return _statement(policy, RDS_DB_CONNECT)


def _dbuser(resource_id="<DB_RESOURCE_ID>", user="<DB_USER>", region="<REGION>"):
    return f"arn:aws:rds-db:{region}:<ACCOUNT_ID>:dbuser:{resource_id}/{user}"


RDS_IAM_VIOLATIONS = [
    ("star-resource", lambda p: _connect(p).update(Resource="*"), "without wildcards"),
    ("any-user", lambda p: _connect(p).update(Resource=_dbuser(user="*")), "without wildcards"),
    ("any-database", lambda p: _connect(p).update(Resource=_dbuser(resource_id="*")), "without wildcards"),
    ("any-database-of-one-character-pattern", lambda p: _connect(p).update(Resource=_dbuser(resource_id="cluster-?")), "without wildcards"),
    ("rds-arn-not-dbuser", lambda p: _connect(p).update(Resource="arn:aws:rds:<REGION>:<ACCOUNT_ID>:cluster:rails-app"), "dbuser ARN"),
    ("cluster-name-not-resource-id", lambda p: _connect(p).update(Resource=_dbuser(resource_id="rails-app")), "not a resource id"),
    ("another-user", lambda p: _connect(p).update(Resource=_dbuser(user="admin")), "'admin'"),
    ("another-region", lambda p: _connect(p).update(Resource=_dbuser(region="us-east-1")), "us-east-1"),
    ("extra-user", lambda p: _connect(p).update(Resource=[DBUSER, _dbuser(user="admin")]), "'admin'"),
    (
        "proxy-as-second-statement",
        lambda p: p["Statement"].append({"Effect": "Allow", "Action": RDS_DB_CONNECT, "Resource": _dbuser(resource_id="prx-0123456789abcdef0")}),
        "is not a token the sidecar signs",
    ),
    ("wildcard-action", lambda p: _connect(p).update(Action="rds-db:*"), "wildcard action"),
    ("extra-action", lambda p: _connect(p).update(Action=[RDS_DB_CONNECT, "rds:DescribeDBClusters"]), "unexpected action 'rds:DescribeDBClusters'"),
    ("connect-missing", lambda p: _connect(p).update(Action="rds:Connect"), "must be granted on exactly"),
    (
        "secrets-manager-kept",
        lambda p: p["Statement"].append({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "x"}),
        "unexpected action 'secretsmanager:GetSecretValue'",
    ),
    ("kms-kept", lambda p: p["Statement"].append({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "<KMS_KEY_ARN>"}), "unexpected action 'kms:Decrypt'"),
    ("deny-effect", lambda p: _connect(p).update(Effect="Deny"), "Effect Allow"),
    ("not-resource", lambda p: _connect(p).update(NotResource=_connect(p).pop("Resource")), "NotResource"),
    ("not-action", lambda p: _connect(p).update(NotAction=_connect(p).pop("Action")), "NotAction"),
    ("old-version", lambda p: p.update(Version="2008-10-17"), "2012-10-17"),
]


@only(RDS_IAM)
@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in RDS_IAM_VIOLATIONS], ids=[v[0] for v in RDS_IAM_VIOLATIONS])
def test_rds_iam_policy_check_catches(policy, task_def, mutate, phrase):
    bad = copy.deepcopy(policy)
    mutate(bad)
    problems = check_rds_iam_policy(bad, sidecar_dbuser_arns(task_def))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def _entry(value):
    def mutate(td):
        for e in tc.container(td, tc.SIDECAR)["environment"]:
            if e["name"] == "SIDECAR_SECRETS":
                e["value"] = value

    return mutate


# The task definition drifts, the policy does not follow.
RDS_IAM_TASK_VIOLATIONS = [
    ("entry-for-another-user", _entry("db=rds-iam://admin@<DB_HOST>:<DB_PORT>"), "must be granted on exactly"),
    ("entry-in-another-region", _entry("db=rds-iam://<DB_USER>@<DB_HOST>:<DB_PORT>?region=us-east-1"), "must be granted on exactly"),
    (
        "entry-is-a-secret",
        _entry("db=arn:aws:secretsmanager:<REGION>:<ACCOUNT_ID>:secret:rds!cluster-<RDS_SECRET_SUFFIX>"),
        "is not a token the sidecar signs ([])",
    ),
]


@only(RDS_IAM)
@pytest.mark.parametrize("mutate, phrase", [v[1:] for v in RDS_IAM_TASK_VIOLATIONS], ids=[v[0] for v in RDS_IAM_TASK_VIOLATIONS])
def test_rds_iam_policy_check_catches_a_task_definition_it_does_not_cover(policy, task_def, mutate, phrase):
    bad = copy.deepcopy(task_def)
    mutate(bad)
    problems = check_rds_iam_policy(policy, sidecar_dbuser_arns(bad))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"
