"""The placeholders of the deployment files (deployments.py: the task definitions and policies), with
example values.

docs/ecs.md, docs/rds-iam.md and docs/failover.md list the same names (test_docs.py keeps them in step). The example
values are what a user substitutes before registering; the tests render the files with them to
run the sidecar's own config check on the environment ECS would actually hand the container.
"""

from __future__ import annotations

import re

EXAMPLE_VALUES = {
    "<ACCOUNT_ID>": "123456789012",
    "<REGION>": "eu-west-1",
    "<RDS_SECRET_SUFFIX>": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0-AbCdEf",
    "<SIDECAR_IMAGE_URI>": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/secrets-sidecar:0.1.0",
    "<APP_IMAGE_URI>": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rails-app:2024-06-01",
    "<TASK_ROLE_ARN>": "arn:aws:iam::123456789012:role/rails-app-task",
    "<EXECUTION_ROLE_ARN>": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
    "<KMS_KEY_ARN>": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    # The failover deployment: the Region of the secret's replica, and the key that encrypts it there (a key
    # is regional: the primary's cannot decrypt the replica).
    "<FAILOVER_REGION>": "eu-central-1",
    "<REPLICA_KMS_KEY_ARN>": "arn:aws:kms:eu-central-1:123456789012:key/5678efab-56ef-78ab-90cd-567890abcdef",
    # The rds-iam deployment: the token's user and the endpoint it is signed for, and the database's
    # resource id in the policy's dbuser ARN (an Aurora cluster's here; db-… for an instance, prx-… for a proxy).
    "<DB_USER>": "app",
    "<DB_HOST>": "rails-app.cluster-c1a2b3c4d5e6.eu-west-1.rds.amazonaws.com",
    "<DB_PORT>": "3306",
    "<DB_RESOURCE_ID>": "cluster-7ZQ2K4M6N8P0R2T4V6X8Z0B2D4",
}

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str) -> str:
    """`text` with every known placeholder replaced; an unknown one raises KeyError."""
    return PLACEHOLDER.sub(lambda m: EXAMPLE_VALUES[m.group(0)], text)
