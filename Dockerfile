# secrets-sidecar image: a static binary on `scratch`, run as uid 65532.
# Build from source (both architectures; docs/ecs.md, "Build and push the image"):
#   docker buildx build --platform linux/amd64,linux/arm64 -t <SIDECAR_IMAGE_URI> --push .
# Build without a registry, around the binary `make release` built on this machine: `make image`.
# No `# syntax=` line: BuildKit would fetch that frontend from a registry, and its built-in one reads
# everything here.

# Which stage provides the binary, the CA bundle and the mount point the final stage copies: `source`
# builds them (the default), `prebuilt` takes them from the build context (scripts/image.sh).
ARG SIDECAR_BUILD=source

# ---- source -------------------------------------------------------------------------------
# The Rust version matches Cargo.toml's rust-version; tests/deploy/test_dockerfile.py checks it.
FROM rust:1.95-bookworm AS source
WORKDIR /src
COPY . .
# The same command CI runs (`make release`, whose binary `make test` runs in this image), so the
# binary in the image is the one CI tested: static glibc (`-C target-feature=+crt-static`) for this
# machine's own triple, `uname -m`-unknown-linux-gnu, which is why buildx builds each platform
# natively (or under emulation) instead of cross-compiling. Static glibc 2.36 resolves hosts
# from /etc/hosts and DNS (the /etc/resolv.conf ECS provides) without NSS modules, so no libc
# has to be copied into the runtime stage.
# The cache mounts only keep crates and compiled dependencies between builds; the binary is
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    make release \
    && install -D -m 0755 "target/$(uname -m)-unknown-linux-gnu/release/secrets-sidecar" /out/secrets-sidecar
# The mount point for the shared volume, created here because `scratch` has no mkdir. Fargate
# creates a task-scoped bind volume root-owned 0755 unless the image already has the mount
# path: then ECS copies this directory, with its owner, into the volume, and the non-root
# sidecar can write there. 0755 lets the app (another uid) traverse it; the files themselves
# are 0440 (owner 65532, group = the sidecar's gid, 1000 in ecs-task-def.json).
RUN install -d -m 0755 /out/secrets

# ---- prebuilt -----------------------------------------------------------------------------
# The same three things without a registry: scripts/image.sh puts the binary of the same `make release`,
# the machine's CA bundle and an empty directory into the build context.
FROM scratch AS prebuilt
COPY secrets-sidecar /out/secrets-sidecar
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY secrets /out/secrets

FROM ${SIDECAR_BUILD} AS build

# ---- runtime ------------------------------------------------------------------------------
FROM scratch
# The AWS SDK talks TLS through rustls, which trusts the system roots (rustls-native-certs):
# without this bundle every call to Secrets Manager fails certificate verification. SSL_CERT_FILE
# names it explicitly so the lookup does not depend on probing distribution paths.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/secrets-sidecar /secrets-sidecar
COPY --from=build --chown=65532:65532 /out/secrets /secrets
# Declared so that `docker run` without a volume still gets a writable /secrets, and so the
# task-scoped volume is populated from the image's directory (owner 65532) on ECS.
VOLUME /secrets
# Non-root. The task definition overrides the group (`user: "65532:1000"`) with the app's gid.
USER 65532:65532
# The daemon's default already; set here so `docker inspect` shows where files go.
ENV SIDECAR_OUTPUT_DIR=/secrets
# Exec form: there is no shell in `scratch`. ECS ignores an image HEALTHCHECK (the task
# definition's healthCheck runs the same command); this one serves `docker run` and compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/secrets-sidecar", "healthcheck"]
# With no arguments the binary runs the daemon, so the task definition needs no `command`.
ENTRYPOINT ["/secrets-sidecar"]
