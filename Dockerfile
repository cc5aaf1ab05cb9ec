# syntax=docker/dockerfile:1
# trustgate: a static musl binary on a distroless base, running as non-root (65532).
#   docker build -t trustgate:dev .

FROM rust:1-bookworm AS build
# musl-tools comes from the pinned Debian release of the base image; pinning its package
# version too would break the build at every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ is declared in Cargo.toml: cargo reads every declared target's path.
COPY benches ./benches
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/trustgate /trustgate

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
