# trustgate's everyday recipes. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

crd_file := "crds/trustedregistrypolicies.trustgate.dev.yaml"

# Show the recipes
default:
    @just --list

# Build the release binary (target/release/trustgate)
build:
    cargo build --release --locked

# Run the whole test suite (the same command CI runs)
test:
    cargo test --locked

# Formatting and lints, as CI checks them
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings

# Format the code
fmt:
    cargo fmt --all

# Regenerate the CRD from the Rust types, in crds/ and in the chart
crds:
    cargo run -q --locked -- crd > {{crd_file}}
    cp {{crd_file}} charts/trustgate/crds/

# Lint, render and validate the Helm chart (installs pinned helm and linters into .tools/)
chart:
    bash .ci/chart.sh

# Run the webhook locally on self-signed TLS with the example policies
run:
    cargo run --release --locked -- serve --self-signed --policy-file examples/policies --addr 127.0.0.1:8443 --admin-addr 127.0.0.1:8080

# End-to-end tests against the cluster KUBECONFIG points to
e2e:
    cargo test --locked --test e2e -- --ignored --test-threads=1

# Check the example workloads against the example policies
check-examples:
    cargo run -q --locked -- check --policy examples/policies examples/workloads

# Engine benchmarks (criterion)
bench:
    cargo bench --locked --bench engine

# Server load benchmark: throughput, latency at a fixed rate, memory
bench-server:
    cargo bench --locked --bench server_load

# Offline check benchmark: generates inputs into target/bench-check/, times `check` on them
bench-check: build
    bash benches/check-inputs.sh
    for f in pods-1000 stream-50mb; do for i in 1 2 3; do /usr/bin/time -f "$f: %e s, %M KB peak RSS" target/release/trustgate check -p examples/policies -o json target/bench-check/$f.yaml > /dev/null || true; done; done

# Everything CI runs
ci:
    bash .ci/run

# Build the container image (needs a Docker engine)
image tag="trustgate:dev":
    docker build -t {{tag}} .
