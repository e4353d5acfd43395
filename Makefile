# The two commands the README puts up front are `make demo` and `make test`.
# Everything else here is what they and CI (.ci/run) call.
SHELL := /bin/bash
CARGO ?= cargo
# Host triple of this machine: the Docker builder stage runs the same `make release`
# natively on amd64 or arm64, so the triple comes from the machine, not a constant.
TARGET ?= $(shell uname -m)-unknown-linux-gnu
# Static glibc: no dynamic loader or libc needed in the scratch image.
# getrandom's default Linux backend finds getrandom(2) through dlsym, which a static binary lacks, and then
# falls back to /dev/urandom; naming the backend makes the binary use the syscall and need no /dev.
RELEASE_RUSTFLAGS := -C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"
BIN := $(or $(CARGO_TARGET_DIR),target)/$(TARGET)/release/secrets-sidecar
# `make image`'s tag: IMAGE=name:tag overrides it.
VERSION := $(shell sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
IMAGE ?= secrets-sidecar:$(VERSION)
# The bare axum server `make bench` compares the sidecar with (bench/ceiling).
CEILING := $(or $(CARGO_TARGET_DIR),target)/$(TARGET)/release/ceiling

.PHONY: demo demo-dev test lint fmt release image ceiling deps bench bench-deps bench-smoke bench-publish bench-storm

## demo: a local demo on a fresh machine (emulator, secret, sidecar, rotation).
# Falls back to the dev-file demo where Python's venv (for the emulator) is missing.
demo:
	@if python3 -m venv --help >/dev/null 2>&1; then \
	  scripts/install-test-deps.sh --emulator-only && scripts/demo.sh; \
	else \
	  echo "python3 -m venv is not available: running the dev-file demo instead (make demo-dev)"; \
	  scripts/demo.sh --dev; \
	fi

## demo-dev: the same demo without AWS or an emulator (--dev-secrets), needing only cargo.
demo-dev:
	scripts/demo.sh --dev

## test: every test, installing what the tests need first.
test: deps
	scripts/test.sh

deps:
	scripts/install-test-deps.sh

# cargo doc documents private items too: the library's readers are its developers, and a broken link in a
# private module's doc is as wrong as one in a public one.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS='-D warnings -A rustdoc::private-intra-doc-links' $(CARGO) doc --locked --no-deps --workspace --document-private-items --quiet

fmt:
	$(CARGO) fmt

## release: the static binary; the Dockerfile's builder stage runs this same target.
release:
	RUSTFLAGS='$(RELEASE_RUSTFLAGS)' $(CARGO) build --locked --release --target $(TARGET)
	@echo "$(BIN)"

## image: the image from the Dockerfile, offline: its `prebuilt` stage takes the binary `make release` built.
# The engine is checked first, so a machine without one fails in a second rather than after the build.
image:
	scripts/image.sh --check
	$(MAKE) --no-print-directory release
	scripts/image.sh "$(BIN)" "$(IMAGE)"

## ceiling: the bare axum server of `make bench`, built exactly as `make release` builds the sidecar.
ceiling:
	RUSTFLAGS='$(RELEASE_RUSTFLAGS)' $(CARGO) build --locked --release --target $(TARGET) -p secrets-sidecar-bench-ceiling

## bench: the sidecar (1/20/200 secrets against moto) against the ceiling; medians of alternated rounds.
# BENCH_ROUNDS, BENCH_SECONDS, BENCH_SECRETS, BENCH_REQUESTS shorten it (bench/bench.py --help).
bench: release ceiling bench-deps
	.venv/bin/python bench/bench.py "$(BIN)" "$(CEILING)"

## bench-smoke: one short round of the smallest configuration, every column filled; scripts/test.sh runs it.
bench-smoke: release ceiling bench-deps
	.venv/bin/python bench/bench.py "$(BIN)" "$(CEILING)" --rounds 1 --seconds 1 --secrets 1 --requests 10000

bench-deps:
	scripts/install-test-deps.sh --bench

## bench-publish: what atomic publication costs (cargo bench).
bench-publish:
	$(CARGO) bench --locked --bench publish

## bench-storm: 500 slow local clients against the release binary (issue 8).
bench-storm: release bench-deps
	.venv/bin/python bench/storm.py "$(BIN)"
