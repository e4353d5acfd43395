"""The placeholders of ecs-task-def.json and iam-policy.json, with example values.

README.md ("Deploying on ECS") lists the same names (test_docs.py keeps the two in step). The example
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
}

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str) -> str:
    """`text` with every known placeholder replaced; an unknown one raises KeyError."""
    return PLACEHOLDER.sub(lambda m: EXAMPLE_VALUES[m.group(0)], text)
