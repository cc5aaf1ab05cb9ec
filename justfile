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

# Policy churn under load: 50 policy updates/s through the watcher's index for 60 s at 2,000 reviews/s
bench-churn secs="60" rate="2000" churn="50":
    TRUSTGATE_BENCH_MODE=churn TRUSTGATE_BENCH_SECS={{secs}} TRUSTGATE_BENCH_RATE={{rate}} TRUSTGATE_CHURN_RATE={{churn}} cargo bench --locked --bench server_load

# Soak: the release server at a fixed rate (default 30 min at 2,000 reviews/s), RSS and fds sampled to target/soak-*.csv
soak secs="1800" rate="2000" sample="10":
    TRUSTGATE_BENCH_MODE=soak TRUSTGATE_BENCH_SECS={{secs}} TRUSTGATE_BENCH_RATE={{rate}} TRUSTGATE_SOAK_SAMPLE_SECS={{sample}} cargo bench --locked --bench server_load

# Fuzz one target (reference, review, manifest) for SECONDS with cargo-fuzz (installed into .tools/)
fuzz target="review" seconds="600":
    bash .ci/fuzz.sh {{seconds}} {{target}}

# Everything CI runs
ci:
    bash .ci/run

# Build the container image (needs a Docker engine)
image tag="trustgate:dev":
    docker build -t {{tag}} .
