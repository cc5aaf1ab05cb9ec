# syntax=docker/dockerfile:1
# trustgate: a static musl binary on a distroless base, running as non-root (65532).
#   docker build -t trustgate:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/trustgate:TAG --push .
# The build stage runs on the target platform (buildx emulates a foreign one with QEMU), so
# musl-gcc and ring's C and assembly are built for the target without a cross toolchain.

FROM rust:1-bookworm AS build
# Set by BuildKit from --platform; the default keeps a plain `docker build` on amd64 working.
ARG TARGETARCH=amd64
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# musl-tools comes from the pinned Debian release of the base image; pinning its package
# version too would break the build at every Debian point release.
# hadolint ignore=DL3008
RUN case "${TARGETARCH}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}: build for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac \
 && echo "${target}" >/rust-target \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${target}"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ is declared in Cargo.toml: cargo reads every declared target's path.
COPY benches ./benches
COPY src ./src
COPY crates ./crates
# A workspace member (a test tool, not built here): Cargo.lock lists it, and --locked needs it.
COPY tools ./tools
# One cache per architecture: the platforms build in parallel and their host artifacts
# (build scripts, proc macros) differ.
RUN --mount=type=cache,id=cargo-registry-${TARGETARCH},target=/usr/local/cargo/registry \
    --mount=type=cache,id=cargo-target-${TARGETARCH},target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --target "${target}" \
 && cp "target/${target}/release/trustgate" /trustgate

# distroless/static is published for both architectures; BuildKit picks the target's.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="trustgate" \
      org.opencontainers.image.description="Kubernetes admission webhook that admits only images from trusted registries" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /trustgate /trustgate
USER 65532:65532
# 8443: HTTPS admission endpoints; 8080: /livez, /readyz, /metrics.
EXPOSE 8443 8080
ENTRYPOINT ["/trustgate"]
CMD ["serve"]
