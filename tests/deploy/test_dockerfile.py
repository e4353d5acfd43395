"""Dockerfile: the image CI cannot build, checked from its text and tied to the Makefile.

The builder stage must run the same `make release` that CI runs and scripts/check-release.sh
checks, so the binary in the image is the tested one; the runtime stage must provide what
ecs-task-def.json relies on. Each rule is a function over the text so the negative controls can
run it on mutated copies.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

import dockerfile as df
import task_checks as tc

ROOT = Path(__file__).resolve().parents[2]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MAKE_RELEASE = re.compile(r"(?:^|[;&|(]\s*|\s)make\s+release(?=$|[\s;&|)])")


def read(name: str) -> str:
    return (ROOT / name).read_text()


def makefile_vars(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)\s*(?:\?=|:=|=)\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def makefile_recipe(text: str, target: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", l))
    recipe = []
    for l in lines[start + 1 :]:
        if not l.startswith("\t"):
            break
        recipe.append(l.strip())
    return recipe


def check_makefile_release(makefile: str) -> list[str]:
    """The Makefile's release target is the static build the Dockerfile comments promise."""
    problems = []
    v = makefile_vars(makefile)
    if "+crt-static" not in v.get("RELEASE_RUSTFLAGS", ""):
        problems.append("RELEASE_RUSTFLAGS must link statically (-C target-feature=+crt-static)")
    if v.get("TARGET") != "$(shell uname -m)-unknown-linux-gnu":
        problems.append(f"TARGET is {v.get('TARGET')!r}; the Dockerfile assumes the machine's own gnu triple")
    try:
        recipe = makefile_recipe(makefile, "release")
    except StopIteration:
        return problems + ["the Makefile has no release target"]
    builds = [r for r in recipe if "cargo build" in r or "$(CARGO) build" in r]
    if len(builds) != 1:
        return problems + [f"release must run exactly one cargo build, runs {builds}"]
    b = builds[0]
    for part in ("RUSTFLAGS='$(RELEASE_RUSTFLAGS)'", "--locked", "--release", "--target $(TARGET)"):
        if part not in b:
            problems.append(f"the release build lacks {part}: {b}")
    return problems


def expected_binary_path(makefile: str) -> str:
    """Makefile's BIN as the shell in the builder sees it: no CARGO_TARGET_DIR, TARGET expanded."""
    v = makefile_vars(makefile)
    target = v["TARGET"].replace("$(shell uname -m)", "$(uname -m)")
    return v["BIN"].replace("$(or $(CARGO_TARGET_DIR),target)", "target").replace("$(TARGET)", target)


def check_dockerfile(text: str, makefile: str, cargo_toml: str) -> list[str]:
    problems = []
    stages = df.parse(text)
    if len(stages) < 2:
        return ["the Dockerfile must be multi-stage (builder + runtime)"]
    builder, runtime = stages[0], stages[-1]

    # -- builder: the same build as CI
    rust_version = tomllib.loads(cargo_toml)["package"]["rust-version"]
    if builder.base != f"rust:{rust_version}-bookworm":
        problems.append(f"builder is FROM {builder.base}, expected rust:{rust_version}-bookworm (Cargo.toml rust-version)")
    runs = [i.args for i in builder.all("RUN")]
    release_runs = [r for r in runs if MAKE_RELEASE.search(r)]
    if len(release_runs) != 1:
        problems.append(f"the builder must run `make release` exactly once, RUN lines: {runs}")
    if any(re.search(r"\bcargo\s+(build|install)\b", r) for r in runs):
        problems.append("the builder calls cargo directly; it must build only through `make release`")
    for ins in builder.all("ENV") + builder.all("ARG"):
        if re.search(r"\b(RUSTFLAGS|CARGO_\w+|TARGET)\b", ins.args):
            problems.append(f"the builder overrides the release build's settings: {ins.keyword} {ins.args}")
    if release_runs and expected_binary_path(makefile) not in release_runs[0]:
        problems.append(f"the builder does not take the binary from {expected_binary_path(makefile)}")

    # -- runtime: nothing but the binary, CA roots and the volume's mount point
    if runtime.base != "scratch":
        problems.append(f"runtime stage is FROM {runtime.base}, expected scratch")
    if runtime.all("RUN"):
        problems.append("the runtime stage cannot RUN anything: scratch has no shell")
    copies = [df.copy_parts(i) for i in runtime.all("COPY")]
    entry = runtime.all("ENTRYPOINT")
    ep = entry[-1].exec_form() if entry else None
    if ep != ["/secrets-sidecar"]:
        problems.append(f"ENTRYPOINT must be the exec form [\"/secrets-sidecar\"], is {entry[-1].args if entry else None}")
    binary = ep[0] if ep else "/secrets-sidecar"
    if not any(f.get("from") == builder.name and dst == binary for f, _, dst in copies):
        problems.append(f"the runtime stage does not copy the binary from the builder to {binary}")
    if not any(f.get("from") == builder.name and src == [CA_BUNDLE] and dst == CA_BUNDLE for f, src, dst in copies):
        problems.append(f"the runtime stage must copy {CA_BUNDLE} from the builder (rustls reads the system roots)")
    env = runtime.env()
    if env.get("SSL_CERT_FILE") not in (None, CA_BUNDLE):
        problems.append(f"SSL_CERT_FILE points at {env['SSL_CERT_FILE']}, not the copied bundle")
    if env.get("SIDECAR_OUTPUT_DIR") != tc.DEFAULT_OUTPUT_DIR:
        problems.append(f"ENV SIDECAR_OUTPUT_DIR must be {tc.DEFAULT_OUTPUT_DIR}, is {env.get('SIDECAR_OUTPUT_DIR')}")
    secrets_copies = [(f, src) for f, src, dst in copies if dst.rstrip("/") == tc.DEFAULT_OUTPUT_DIR]
    if not secrets_copies:
        problems.append("the image must contain /secrets (Fargate makes a missing mount path root-owned 0755)")
    for f, src in secrets_copies:
        owner = f.get("chown", "")
        if owner.partition(":")[0] != str(tc.SIDECAR_UID):
            problems.append(f"/secrets must be owned by uid {tc.SIDECAR_UID}, COPY --chown is {owner!r}")
        if not any(re.search(rf"(install -d|mkdir)\b.*\s{re.escape(s)}(\s|$)", r) for s in src for r in runs):
            problems.append(f"the builder never creates the directory {src} copied to /secrets")
    if tc.DEFAULT_OUTPUT_DIR not in " ".join(i.args for i in runtime.all("VOLUME")):
        problems.append("VOLUME /secrets is missing")
    users = runtime.all("USER")
    if not users or users[-1].args.partition(":")[0] != str(tc.SIDECAR_UID):
        problems.append(f"USER must be {tc.SIDECAR_UID}, is {users[-1].args if users else None}")
    hcs = runtime.all("HEALTHCHECK")
    if not hcs or hcs[-1].exec_form() != [binary, "healthcheck"]:
        problems.append(f"HEALTHCHECK must be CMD [\"{binary}\", \"healthcheck\"] in exec form")
    return problems


def test_makefile_release_target_is_the_static_build():
    assert check_makefile_release(read("Makefile")) == []


def test_dockerfile_builds_with_make_release_and_ships_what_the_task_needs():
    assert check_dockerfile(read("Dockerfile"), read("Makefile"), read("Cargo.toml")) == []


def test_the_binary_path_is_derived_from_the_makefile():
    assert expected_binary_path(read("Makefile")) == "target/$(uname -m)-unknown-linux-gnu/release/secrets-sidecar"


def test_task_definition_user_uid_matches_the_image(task_def):
    runtime = df.parse(read("Dockerfile"))[-1]
    image_uid = runtime.all("USER")[-1].args.partition(":")[0]
    task_uid = tc.container(task_def, tc.SIDECAR)["user"].partition(":")[0]
    assert image_uid == task_uid == str(tc.SIDECAR_UID)


DOCKERFILE_VIOLATIONS = [
    ("cargo-instead-of-make", "    make release \\", "    cargo build --release --locked \\", "make release"),
    ("no-build", "    make release \\", "    true \\", "exactly once"),
    ("other-rust", "FROM rust:1.95-bookworm AS builder", "FROM rust:1.94-bookworm AS builder", "rust-version"),
    ("rustflags-override", "WORKDIR /src", "WORKDIR /src\nENV RUSTFLAGS=-Copt-level=0", "overrides"),
    ("other-binary-path", '"target/$(uname -m)-unknown-linux-gnu/release/secrets-sidecar"', '"target/release/secrets-sidecar"', "does not take the binary"),
    ("distro-runtime", "FROM scratch", "FROM debian:bookworm-slim", "expected scratch"),
    ("no-ca-bundle", "COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n", "", "rustls"),
    ("secrets-root-owned", "--chown=65532:65532 /out/secrets", "/out/secrets", "owned by uid 65532"),
    ("secrets-not-created", "RUN install -d -m 0755 /out/secrets\n", "", "never creates"),
    ("no-secrets-dir", "COPY --from=builder --chown=65532:65532 /out/secrets /secrets\n", "", "must contain /secrets"),
    ("no-volume", "VOLUME /secrets\n", "", "VOLUME"),
    ("root-user", "USER 65532:65532", "USER root", "USER must be"),
    ("output-dir", "ENV SIDECAR_OUTPUT_DIR=/secrets", "ENV SIDECAR_OUTPUT_DIR=/data", "SIDECAR_OUTPUT_DIR"),
    ("healthcheck-shell-form", 'CMD ["/secrets-sidecar", "healthcheck"]', "CMD /secrets-sidecar healthcheck", "HEALTHCHECK"),
    ("entrypoint-shell-form", 'ENTRYPOINT ["/secrets-sidecar"]', "ENTRYPOINT /secrets-sidecar", "ENTRYPOINT"),
    ("binary-elsewhere", "/out/secrets-sidecar /secrets-sidecar", "/out/secrets-sidecar /usr/bin/secrets-sidecar", "copy the binary"),
]


@pytest.mark.parametrize("old, new, phrase", [v[1:] for v in DOCKERFILE_VIOLATIONS], ids=[v[0] for v in DOCKERFILE_VIOLATIONS])
def test_dockerfile_check_catches(old, new, phrase):
    text = read("Dockerfile")
    assert old in text, f"the mutation's anchor {old!r} is gone from the Dockerfile"
    problems = check_dockerfile(text.replace(old, new), read("Makefile"), read("Cargo.toml"))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


MAKEFILE_VIOLATIONS = [
    ("no-static", "+crt-static", "-crt-static", "link statically"),
    ("no-target", "--release --target $(TARGET)", "--release", "--target $(TARGET)"),
    ("unlocked", "build --locked --release", "build --release", "--locked"),
    ("musl", "TARGET ?= $(shell uname -m)-unknown-linux-gnu", "TARGET ?= $(shell uname -m)-unknown-linux-musl", "TARGET is"),
]


@pytest.mark.parametrize("old, new, phrase", [v[1:] for v in MAKEFILE_VIOLATIONS], ids=[v[0] for v in MAKEFILE_VIOLATIONS])
def test_makefile_check_catches(old, new, phrase):
    text = read("Makefile")
    assert old in text, f"the mutation's anchor {old!r} is gone from the Makefile"
    problems = check_makefile_release(text.replace(old, new))
    assert any(phrase in p for p in problems), f"expected {phrase!r} in {problems}"


def test_a_musl_makefile_no_longer_matches_the_dockerfiles_binary_path():
    mk = read("Makefile").replace("-unknown-linux-gnu", "-unknown-linux-musl")
    problems = check_dockerfile(read("Dockerfile"), mk, read("Cargo.toml"))
    assert any("does not take the binary" in p for p in problems), problems


# ---- .dockerignore: the build context holds what `make release` reads, and little else


def ignored(patterns: list[str], path: str) -> bool:
    result = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        parts = path.split("/")
        # A pattern matches the path or any of its parent directories (Docker semantics).
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat.strip("/")) for i in range(len(parts)))
        hit = hit or fnmatch.fnmatch(path, pat.replace("**/", "*"))
        if hit:
            result = not neg
    return result


def dockerignore_patterns(text: str) -> list[str]:
    return [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def build_inputs() -> list[str]:
    """Files `cargo build --release` reads: manifest, lock, Makefile, src/, build.rs, cargo
    config, and whatever src/ pulls in with include_str!/include_bytes!."""
    files = ["Cargo.toml", "Cargo.lock", "Makefile"]
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*") if p.is_file()]
    files += [f for f in ("build.rs", ".cargo/config.toml", "rust-toolchain.toml") if (ROOT / f).exists()]
    # Targets declared with an explicit path must exist even when another target is built.
    manifest = tomllib.loads(read("Cargo.toml"))
    # Cargo resolves a declared target's file when it loads the manifest, for any build: an
    # explicit `path`, else the conventional one (`[[bench]] name = "x"` -> benches/x.rs).
    conventional = {"bin": "src/bin", "test": "tests", "bench": "benches", "example": "examples"}
    for kind, folder in conventional.items():
        for t in manifest.get(kind, []):
            if "path" in t:
                files.append(t["path"])
            elif (ROOT / folder / t["name"] / "main.rs").exists():
                files.append(f"{folder}/{t['name']}/main.rs")
            else:
                files.append(f"{folder}/{t['name']}.rs")
    # Workspace members: cargo loads each member's manifest and its targets for any build (bench/ceiling),
    # and compiles all of a member the sidecar depends on (edge).
    for member in manifest.get("workspace", {}).get("members", []):
        if member != ".":
            files.append(f"{member}/Cargo.toml")
            sub = tomllib.loads(read(f"{member}/Cargo.toml"))
            files += [f"{member}/{t['path']}" for t in sub.get("bin", []) if "path" in t]
            files += [str(p.relative_to(ROOT)) for p in (ROOT / member / "src").rglob("*") if p.is_file()]
    files = list(dict.fromkeys(files))
    if "build" in manifest.get("package", {}) and isinstance(manifest["package"]["build"], str):
        files.append(manifest["package"]["build"])
    for src in (ROOT / "src").rglob("*.rs"):
        for rel in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', src.read_text()):
            files.append(str((src.parent / rel).resolve().relative_to(ROOT)))
    return files


def test_dockerignore_keeps_every_build_input_and_drops_the_bulk():
    patterns = dockerignore_patterns(read(".dockerignore"))
    missing = [f for f in build_inputs() if ignored(patterns, f)]
    assert missing == [], f".dockerignore drops files the release build needs: {missing}"
    for bulk in ("target/release/secrets-sidecar", ".git/HEAD", ".venv/bin/python"):
        assert ignored(patterns, bulk), f".dockerignore should exclude {bulk}"


def test_dockerignore_check_catches_an_excluded_source_dir():
    patterns = dockerignore_patterns(read(".dockerignore")) + ["src"]
    assert any(ignored(patterns, f) for f in build_inputs())


def test_dockerignore_check_catches_an_excluded_workspace_member():
    patterns = dockerignore_patterns(read(".dockerignore")) + ["bench"]
    assert [f for f in build_inputs() if ignored(patterns, f)] == ["bench/ceiling/Cargo.toml", "bench/ceiling/src/main.rs"]


def test_dockerignore_check_catches_an_excluded_dependency_member():
    patterns = dockerignore_patterns(read(".dockerignore")) + ["edge/src"]
    assert sorted(f for f in build_inputs() if ignored(patterns, f)) == [
        "edge/src/dispatch.rs", "edge/src/lib.rs", "edge/src/memory.rs", "edge/src/serve.rs"]
