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

.PHONY: demo demo-dev test lint fmt release check-release deps bench bench-footprint

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

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## release: the static binary; the Dockerfile's builder stage runs this same target.
release:
	RUSTFLAGS='$(RELEASE_RUSTFLAGS)' $(CARGO) build --locked --release --target $(TARGET)
	@echo "$(BIN)"

## check-release: what CI can check of the image without a Docker engine.
check-release: release
	scripts/check-release.sh "$(BIN)"

## bench: what atomic publication costs (cargo bench) and the running sidecar's memory and latency.
bench: bench-footprint
	$(CARGO) bench --locked --bench publish

bench-footprint: release
	scripts/install-test-deps.sh --emulator-only
	.venv/bin/python bench/footprint.py "$(BIN)"
