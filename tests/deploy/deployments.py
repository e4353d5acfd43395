"""The deployments the repository ships: a task definition and the task-role policy it needs.

`secrets-manager` publishes the RDS-managed secret; `rds-iam` publishes an RDS IAM auth token the
sidecar signs itself (docs/rds-iam.md). conftest.py runs every task-definition test on
both; test_iam_policy.py checks each policy with the checker of its kind.
"""

from __future__ import annotations

from typing import NamedTuple


class Deployment(NamedTuple):
    task_def: str
    policy: str


DEPLOYMENTS = {
    "secrets-manager": Deployment("ecs-task-def.json", "iam-policy.json"),
    "rds-iam": Deployment("ecs-task-def.rds-iam.json", "iam-policy.rds-iam.json"),
}
