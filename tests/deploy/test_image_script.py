"""scripts/image.sh's engine check, which `make image` runs before the release build: without podman or a
Docker daemon it stops at once and names what to install; with an engine it goes on.

Run with a PATH holding only what the check needs, plus stand-ins for the engines: the machine's own
podman or docker never enters the picture."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "image.sh"


def check(tmp_path: Path, engines: dict[str, int]) -> subprocess.CompletedProcess:
    """`image.sh --check` with PATH = bash, dirname and a stand-in per engine exiting with the given code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, code in engines.items():
        stub = bin_dir / name
        stub.write_text(f"#!{shutil.which('bash')}\nexit {code}\n")
        stub.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, env=env, timeout=30)


def test_without_an_engine_it_fails_naming_what_to_install(tmp_path):
    proc = check(tmp_path, {})
    assert proc.returncode == 1, proc.stderr
    assert "apt-get install podman runc" in proc.stderr
    assert "docker is installed" not in proc.stderr


def test_a_docker_cli_without_a_daemon_is_no_engine_and_says_so(tmp_path):
    proc = check(tmp_path, {"docker": 1})
    assert proc.returncode == 1, proc.stderr
    assert "its daemon does not answer" in proc.stderr


def test_podman_or_an_answering_docker_passes_the_check(tmp_path):
    assert check(tmp_path / "p", {"podman": 0}).returncode == 0
    assert check(tmp_path / "d", {"docker": 0}).returncode == 0
