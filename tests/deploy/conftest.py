"""Fixtures shared by the deployment tests: the repository's files, freshly loaded per test so a
test may mutate its copy (the negative controls do), and the configuration of the image built from the
Dockerfile (`make image`; scripts/test.sh names it in $SIDECAR_IMAGE).

`task_def` and `policy` are those of one deployment (deployments.py); every test that uses them runs
once per deployment. A test that is about one kind only pins it with
`@pytest.mark.parametrize("deployment", [...])`, which overrides the fixture below."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def image_config() -> dict:
    """`podman image inspect` of $SIDECAR_IMAGE: what a container started from the image gets. Unset is a
    failure, never a skip: the task definition is checked against the image users run."""
    image = os.environ.get("SIDECAR_IMAGE")
    if not image:
        pytest.fail(
            "SIDECAR_IMAGE is not set: build the image with `make image IMAGE=secrets-sidecar:test` and set "
            "SIDECAR_IMAGE=secrets-sidecar:test (scripts/test.sh does both)",
            pytrace=False,
        )
    proc = subprocess.run([str(ROOT / "scripts" / "podman.sh"), "image", "inspect", image], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"podman image inspect {image} failed: {proc.stderr.strip()}", pytrace=False)
    return json.loads(proc.stdout)[0]


@pytest.fixture
def image_env(image_config) -> dict[str, str]:
    """The ENV the image gives every container started from it (ECS adds the task's on top)."""
    return dict(e.split("=", 1) for e in image_config["Config"]["Env"])


@pytest.fixture
def entrypoint(image_config) -> str:
    return image_config["Config"]["Entrypoint"][0]


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
