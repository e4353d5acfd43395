"""Dockerfile: what the image built and run in `make test` cannot show.

`make test` builds the image with the Dockerfile's `prebuilt` stage (scripts/image.sh) and runs it as
ECS does (tests/image): the final stage — scratch, the user, the volume's owner, the HEALTHCHECK, the
entrypoint, the environment — is proven there, on the real image. The `source` stage, which users build
with a registry at hand (`docker buildx build .`), cannot run here. So this checks, from the text, that
it would build the same image: it is the default, it runs the same `make release` with the Rust version
of Cargo.toml, and it provides every path the final stage copies from the stage it builds on. Each rule is
a function over the text so the negative controls can run it on mutated copies.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

import dockerfile as df

ROOT = Path(__file__).resolve().parents[2]
# Paths the `source` stage's base image (Debian's ca-certificates, in rust:…-bookworm) already has.
FROM_BASE_IMAGE = {"/etc/ssl/certs/ca-certificates.crt"}
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


def expected_binary_path(makefile: str) -> str:
    """Makefile's BIN as the shell in the builder sees it: no CARGO_TARGET_DIR, TARGET expanded."""
    v = makefile_vars(makefile)
    target = v["TARGET"].replace("$(shell uname -m)", "$(uname -m)")
    return v["BIN"].replace("$(or $(CARGO_TARGET_DIR),target)", "target").replace("$(TARGET)", target)


def created_paths(runs: list[str]) -> set[str]:
    """Paths the RUN lines create with `install`: directories with -d, else the last operand."""
    out = set()
    for r in runs:
        words = shlex.split(r)
        for i, w in enumerate(words):
            if w != "install":
                continue
            flags, operands, rest = [], [], iter(words[i + 1 :])
            for a in rest:
                if a in ("&&", "||", ";", "|"):
                    break
                if a.startswith("-"):
                    flags.append(a)
                    if a in ("-m", "-o", "-g"):
                        next(rest, None)  # the option's value
                else:
                    operands.append(a)
            out |= set(operands) if "-d" in flags else set(operands[-1:])
    return out


def check_dockerfile(text: str, makefile: str, cargo_toml: str) -> list[str]:
    problems = []
    args = df.global_args(text)
    stages = df.parse(text)
    by_name = {s.name: s for s in stages if s.name}
    if args.get("SIDECAR_BUILD") != "source":
        problems.append(f"ARG SIDECAR_BUILD must default to source (a plain `docker build .` builds from source), is {args.get('SIDECAR_BUILD')!r}")
    source, final = by_name.get("source"), stages[-1]
    if source is None:
        return problems + ["no stage named source"]
    build = by_name.get("build")
    if build is None or build.base != "${SIDECAR_BUILD}" or build.instructions:
        problems.append("the final stage must copy from a stage `FROM ${SIDECAR_BUILD} AS build` and nothing else")

    # -- the source stage: the same build as CI
    rust_version = tomllib.loads(cargo_toml)["package"]["rust-version"]
    if source.base != f"rust:{rust_version}-bookworm":
        problems.append(f"source is FROM {source.base}, expected rust:{rust_version}-bookworm (Cargo.toml rust-version)")
    runs = [i.args for i in source.all("RUN")]
    release_runs = [r for r in runs if MAKE_RELEASE.search(r)]
    if len(release_runs) != 1:
        problems.append(f"the source stage must run `make release` exactly once, RUN lines: {runs}")
    if any(re.search(r"\bcargo\s+(build|install)\b", r) for r in runs):
        problems.append("the source stage calls cargo directly; it must build only through `make release`")
    for ins in source.all("ENV") + source.all("ARG"):
        if re.search(r"\b(RUSTFLAGS|CARGO_\w+|TARGET)\b", ins.args):
            problems.append(f"the source stage overrides the release build's settings: {ins.keyword} {ins.args}")
    if release_runs and expected_binary_path(makefile) not in release_runs[0]:
        problems.append(f"the source stage does not take the binary from {expected_binary_path(makefile)}")

    # -- it provides what the final stage copies
    provided = created_paths(runs) | FROM_BASE_IMAGE
    for ins in final.all("COPY"):
        flags, sources, _ = df.copy_parts(ins)
        if flags.get("from") == "build":
            for src in sources:
                if src not in provided:
                    problems.append(f"the final stage copies {src} from the build, which the source stage never creates")
    return problems


def test_the_source_stage_builds_what_the_image_needs_with_make_release():
    assert check_dockerfile(read("Dockerfile"), read("Makefile"), read("Cargo.toml")) == []


def test_the_binary_path_is_derived_from_the_makefile():
    assert expected_binary_path(read("Makefile")) == "target/$(uname -m)-unknown-linux-gnu/release/secrets-sidecar"


DOCKERFILE_VIOLATIONS = [
    ("cargo-instead-of-make", "    make release \\", "    cargo build --release --locked \\", "make release"),
    ("no-build", "    make release \\", "    true \\", "exactly once"),
    ("other-rust", "FROM rust:1.95-bookworm AS source", "FROM rust:1.94-bookworm AS source", "rust-version"),
    ("rustflags-override", "WORKDIR /src", "WORKDIR /src\nENV RUSTFLAGS=-Copt-level=0", "overrides"),
    ("other-binary-path", '"target/$(uname -m)-unknown-linux-gnu/release/secrets-sidecar"', '"target/release/secrets-sidecar"', "does not take the binary"),
    ("prebuilt-by-default", "ARG SIDECAR_BUILD=source", "ARG SIDECAR_BUILD=prebuilt", "default to source"),
    ("secrets-not-created", "RUN install -d -m 0755 /out/secrets\n", "", "/out/secrets from the build, which the source stage never creates"),
    ("binary-elsewhere", "/secrets-sidecar\" /out/secrets-sidecar", "/secrets-sidecar\" /out/bin/secrets-sidecar", "/out/secrets-sidecar from the build"),
]


@pytest.mark.parametrize("old, new, phrase", [v[1:] for v in DOCKERFILE_VIOLATIONS], ids=[v[0] for v in DOCKERFILE_VIOLATIONS])
def test_dockerfile_check_catches(old, new, phrase):
    text = read("Dockerfile")
    assert old in text, f"the mutation's anchor {old!r} is gone from the Dockerfile"
    problems = check_dockerfile(text.replace(old, new), read("Makefile"), read("Cargo.toml"))
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
