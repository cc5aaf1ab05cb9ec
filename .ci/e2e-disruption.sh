#!/usr/bin/env bash
# API server disruption e2e (tests/e2e_disruption.rs): kube-apiserver restarted, etcd restarted,
# kube-apiserver frozen with SIGSTOP for 60 s, against two webhooks sharing a Lease.
#
# Uses the kit in ../shared/k8s (TRUSTGATE_E2E_K8S to point elsewhere) in LOCAL mode with a state
# directory and ports of its own, so that no other cluster on the machine is touched:
#   TRUSTGATE_E2E_K8S_STATE  (default /tmp/trustgate-e2e-disruption-$UID)
#   K8S_API_PORT 7443, K8S_ETCD_PORT 7379, K8S_ETCD_PEER_PORT 7380, K8S_KCM_PORT 11257
# Without the kit it prints why and exits 0. The cluster is stopped (`down`, data kept) at the
# end, pass or fail. About 2.5 minutes, most of it the 60 s freeze.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never

KIT="${TRUSTGATE_E2E_K8S:-$ROOT/../shared/k8s}"
if [ ! -x "$KIT/up" ] || [ ! -x "$KIT/down" ]; then
    echo "[e2e-disruption] skipped: no Kubernetes kit at $KIT (set TRUSTGATE_E2E_K8S to its folder)"
    exit 0
fi
KIT="$(cd "$KIT" && pwd)"
export TRUSTGATE_E2E_K8S="$KIT"
export TRUSTGATE_E2E_K8S_STATE="${TRUSTGATE_E2E_K8S_STATE:-/tmp/trustgate-e2e-disruption-$(id -u)}"
export TRUSTGATE_K8S_STATE="$TRUSTGATE_E2E_K8S_STATE"
export K8S_API_PORT="${K8S_API_PORT:-7443}" K8S_ETCD_PORT="${K8S_ETCD_PORT:-7379}"
export K8S_ETCD_PEER_PORT="${K8S_ETCD_PEER_PORT:-7380}" K8S_KCM_PORT="${K8S_KCM_PORT:-11257}"

start=$SECONDS
say() { printf '[e2e-disruption] %s (%ss)\n' "$*" "$((SECONDS - start))"; }

# Build first: the cluster runs only as long as the tests need it.
say "building the tests"
cargo test --locked --test e2e_disruption --no-run

say "starting the kit's local cluster (state $TRUSTGATE_K8S_STATE, API port $K8S_API_PORT)"
trap 'say "stopping the cluster"; "$KIT/down" || true' EXIT
eval "$("$KIT/up")"
export KUBECONFIG

say "running the disruption tests"
cargo test --locked --test e2e_disruption -- --ignored --test-threads=1 --nocapture
say "done"
