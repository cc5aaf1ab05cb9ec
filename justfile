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

# Lint the GitHub Actions workflows and the Dockerfile (installs pinned linters into .tools/)
lint-release:
    bash .ci/lint-release.sh

# Run the webhook locally on self-signed TLS with the example policies
run:
    cargo run --release --locked -- serve --self-signed --policy-file examples/policies --addr 127.0.0.1:8443 --admin-addr 127.0.0.1:8080

# End-to-end tests (every tests/e2e*.rs file) against the cluster KUBECONFIG points to
e2e:
    cargo build --locked -p trustgate-body-attacker
    cargo test --locked --test e2e --test e2e_semantics --test e2e_cluster_check --test e2e_policy_reports --test e2e_inheritance --test e2e_bodies -- --ignored --test-threads=1

# API server disruption e2e on the kit's local cluster (own state dir and ports; ../shared/k8s)
e2e-disruption:
    bash .ci/e2e-disruption.sh

# End-to-end tests on the kit's control plane (../shared/k8s), the webhook on this machine, as CI runs them
e2e-local:
    bash .ci/e2e.sh local

# End-to-end tests in the kit's node: image, helm install, in-cluster suite with the HA test (root)
e2e-cluster:
    bash .ci/e2e.sh node

# Check the example workloads against the example policies
check-examples:
    cargo run -q --locked -- check --policy examples/policies examples/workloads

# Engine benchmarks (criterion)
bench:
    cargo bench --locked --bench engine

# Server load benchmark: throughput, latency at a fixed rate, memory
bench-server:
    cargo bench --locked --bench server_load

# Server CPU per review: 40,000 reviews at a fixed 2,000/s over 32 keep-alive TLS connections, the
# denied Deployment against examples/policies (the figure is the server's utime+stime per review)
bench-cpu:
    TRUSTGATE_BENCH_SECS=2 TRUSTGATE_BENCH_FIXED_CONNECTIONS=32 TRUSTGATE_BENCH_FIXED_SECS=20 TRUSTGATE_BENCH_POLICY_FILE={{justfile_directory()}}/examples/policies cargo bench --locked --bench server_load

# (6,000 connections: the recipe raises the open-file limit for the bench and the server it starts)
# Connection-flood benchmark: reviews from one address while another hogs connections
bench-flood:
    ulimit -n "$(ulimit -Hn)" && cargo bench --locked --bench flood

# (1,000 attacker connections: the recipe raises the open-file limit for the bench and the server it starts)
# Request-body memory benchmark: stalled, trickled and HTTP/2 uploads from four addresses while reviews come from another
bench-bodies:
    ulimit -n "$(ulimit -Hn)" && cargo bench --locked --bench bodies

# (3 runs each; `just bench-check path/to/other/trustgate` times another build the same way)
# Offline check benchmark: generates inputs into target/bench-check/, times `check` on them
bench-check bin="target/release/trustgate": build
    bash benches/check-inputs.sh
    for o in json text; do for f in pods-1000 stream-50mb stream-1gb; do for i in 1 2 3; do /usr/bin/time -f "$f -o $o: %e s, %U s user, %S s system, %M KB peak RSS" {{bin}} check -p examples/policies -o $o target/bench-check/$f.yaml > /dev/null || true; done; done; done

# Policy churn under load: 50 policy updates/s through the watcher's index for 60 s at 2,000 reviews/s
bench-churn secs="60" rate="2000" churn="50":
    TRUSTGATE_BENCH_MODE=churn TRUSTGATE_BENCH_SECS={{secs}} TRUSTGATE_BENCH_RATE={{rate}} TRUSTGATE_CHURN_RATE={{churn}} cargo bench --locked --bench server_load

# Soak: the release server at a fixed rate (default 30 min at 2,000 reviews/s), RSS and fds sampled to target/soak-*.csv
soak secs="1800" rate="2000" sample="10":
    TRUSTGATE_BENCH_MODE=soak TRUSTGATE_BENCH_SECS={{secs}} TRUSTGATE_BENCH_RATE={{rate}} TRUSTGATE_SOAK_SAMPLE_SECS={{sample}} cargo bench --locked --bench server_load

# Targets: reference, review, manifest (fuzz/src/lib.rs); `just fuzz manifest 3600` runs one for an hour.
# Fuzz the readers of untrusted input (cargo fuzz): every target for 20 s, or TARGET for SECONDS
fuzz target="" seconds="600":
    if [[ -z "{{target}}" ]]; then bash .ci/fuzz.sh; else bash .ci/fuzz.sh {{target}} {{seconds}}; fi

# Everything CI runs
ci:
    bash .ci/run

# Build the container image (needs a Docker engine)
image tag="trustgate:dev":
    docker build -t {{tag}} .

# Build the multi-arch image as the release does (needs Docker buildx and QEMU)
image-multiarch tag="trustgate:dev":
    docker buildx build --platform linux/amd64,linux/arm64 -t {{tag}} .
