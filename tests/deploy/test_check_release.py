"""scripts/check-release.sh, the CI stand-in for building the image, is itself tested here.

The real release binary takes many minutes to build (LTO), so these tests compile a small static
C stand-in (fixtures/fake_sidecar.c) that keeps or breaks each promise the script checks; the
real binary goes through the same script in `make check-release`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-release.sh"
FAKE_SRC = Path(__file__).parent / "fixtures" / "fake_sidecar.c"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def build_fake(tmp_path: Path, *defines: str, static: bool = True, version: str = VERSION) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc/gcc) to build the check-release stand-in; the Rust toolchain needs one too")
    out = tmp_path / "secrets-sidecar"
    cmd = [cc, "-O2", f'-DVERSION="{version}"', *[f"-D{d}" for d in defines], "-o", str(out), str(FAKE_SRC)]
    if static:
        cmd.insert(1, "-static")
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def check_release(binary: Path, daemon: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CHECK_RELEASE_NO_DAEMON"}
    if not daemon:
        env["CHECK_RELEASE_NO_DAEMON"] = "1"  # the stand-in has no daemon for step 5
    return subprocess.run([str(SCRIPT), str(binary)], capture_output=True, text=True, timeout=60, env=env)


def test_a_binary_that_keeps_every_promise_passes_and_its_size_is_reported(tmp_path):
    proc = check_release(build_fake(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "statically linked" in proc.stdout
    assert f"--version: secrets-sidecar {VERSION}" in proc.stdout
    assert re.search(r"size: \d+\.\d\d MiB \(\d+ bytes\)", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    "defines, static, version, phrase",
    [
        pytest.param((), False, VERSION, "requests a dynamic loader", id="dynamically-linked"),
        pytest.param((), True, VERSION + "1", "expected secrets-sidecar", id="wrong-version"),
        pytest.param((), True, "1" + VERSION, "expected secrets-sidecar", id="version-prefix"),
        pytest.param(("BREAK_HEALTH_ALWAYS_OK",), True, VERSION, "expected exactly 1", id="healthcheck-always-ok"),
        pytest.param(("BREAK_HEALTH_CONFIG_ERROR",), True, VERSION, "expected exactly 1", id="healthcheck-exit-2"),
        pytest.param(("BREAK_HEALTH_SLOW",), True, VERSION, "to notice that nothing listens", id="healthcheck-slow"),
        pytest.param(("BREAK_HEALTH_HANGS",), True, VERSION, "hung", id="healthcheck-hangs"),
    ],
)
def test_check_release_rejects(tmp_path, defines, static, version, phrase):
    proc = check_release(build_fake(tmp_path, *defines, static=static, version=version))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert phrase in proc.stderr, proc.stdout + proc.stderr


def test_check_release_rejects_a_file_that_is_not_elf(tmp_path):
    script = tmp_path / "secrets-sidecar"
    script.write_text("#!/bin/sh\necho secrets-sidecar 0.1.0\n")
    script.chmod(0o755)
    proc = check_release(script)
    assert proc.returncode == 1 and "not an ELF file" in proc.stderr, proc.stderr


def test_the_image_root_run_fails_for_a_binary_whose_daemon_never_gets_healthy(tmp_path):
    proc = check_release(build_fake(tmp_path), daemon=True)
    if os.geteuid() == 0 and (ROOT / ".venv" / "bin" / "moto_server").exists():
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "never became healthy" in proc.stderr, proc.stdout + proc.stderr
    else:
        pytest.fail("the image-root run needs root and .venv/bin/moto_server (make deps); CI has both")
