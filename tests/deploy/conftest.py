"""Fixtures shared by the deployment tests: the repository's files, freshly loaded per test so a
test may mutate its copy (the negative controls do).

`task_def` and `policy` are those of one deployment (deployments.py); every test that uses them runs
once per deployment. A test that is about one kind only pins it with
`@pytest.mark.parametrize("deployment", [...])`, which overrides the fixture below."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dockerfile
from deployments import DEPLOYMENTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=list(DEPLOYMENTS))
def deployment(request) -> str:
    return request.param


@pytest.fixture
def task_def(deployment) -> dict:
    return json.loads((ROOT / DEPLOYMENTS[deployment].task_def).read_text())


@pytest.fixture
def policy(deployment) -> dict:
    return json.loads((ROOT / DEPLOYMENTS[deployment].policy).read_text())


@pytest.fixture
def dockerfile_text() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.fixture
def runtime_stage(dockerfile_text) -> dockerfile.Stage:
    return dockerfile.parse(dockerfile_text)[-1]


@pytest.fixture
def image_env(runtime_stage) -> dict[str, str]:
    """The ENV the image gives every container started from it (ECS adds the task's on top)."""
    return runtime_stage.env()


@pytest.fixture
def entrypoint(runtime_stage) -> str:
    ep = runtime_stage.all("ENTRYPOINT")[-1].exec_form()
    assert ep, "Dockerfile ENTRYPOINT must be in exec form"
    return ep[0]


@pytest.fixture
def sidecar_bin() -> str:
    """The built binary, from $SIDECAR_BIN. Unset is a failure, never a skip: a suite that
    silently drops the config check would pass with a task definition the sidecar rejects."""
    path = os.environ.get("SIDECAR_BIN")
    if not path:
        pytest.fail(
            "SIDECAR_BIN is not set: point it at the built secrets-sidecar binary, e.g. "
            "SIDECAR_BIN=$CARGO_TARGET_DIR/debug/secrets-sidecar (scripts/test.sh sets it)",
            pytrace=False,
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"SIDECAR_BIN={path} is not an executable file", pytrace=False)
    return path
