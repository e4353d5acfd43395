"""The deployments the repository ships: a task definition and the task-role policy it needs.

`secrets-manager` publishes the RDS-managed secret; `failover` does the same and reads the secret's
replica in another Region while its own fails (docs/failover.md): the same task definition with
SIDECAR_FAILOVER_REGION, and a policy that adds the replica's ARN and its Region's key; `rds-iam`
publishes an RDS IAM auth token the sidecar signs itself (docs/rds-iam.md). conftest.py runs every
task-definition test on all three; test_iam_policy.py checks each policy with the checker of its kind.
"""

from __future__ import annotations

from typing import NamedTuple


class Deployment(NamedTuple):
    task_def: str
    policy: str


DEPLOYMENTS = {
    "secrets-manager": Deployment("ecs-task-def.json", "iam-policy.json"),
    "failover": Deployment("ecs-task-def.failover.json", "iam-policy.failover.json"),
    "rds-iam": Deployment("ecs-task-def.rds-iam.json", "iam-policy.rds-iam.json"),
}
