#!/usr/bin/env bash
# The e2e suite (tests/e2e.rs) against a real API server from the Kubernetes kit beside the
# checkout (../shared/k8s, or TRUSTGATE_K8S_KIT):
#   e2e.sh local   the kit's control plane on 127.0.0.1; each test runs the webhook on the host
#   e2e.sh node    the kit's control plane and node in netns tgnode; the chart installed from an
#                  image of this build; TRUSTGATE_E2E_MODE=in-cluster, with the HA test (needs root)
#   e2e.sh         both, one after the other (what .ci/run calls); without the kit: one line
#                  saying so, exit 0 (a user's machine)
# Before each run, policies that are not the suite's are applied cluster-wide
# (.ci/e2e-foreign-policies.yaml): the suite must hold beside them. Whatever this script
# installs is removed when it exits (helm uninstall, the foreign policies, `down`), pass or fail;
# E2E_KEEP_CLUSTER=1 leaves the clusters running. A cluster or release left from an earlier run
# is reused or replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never

KIT="${TRUSTGATE_K8S_KIT:-../shared/k8s}"
RELEASE=trustgate
RELEASE_NS=trustgate-system
IMAGE=trustgate:e2e
# The e2e cargo profile: release code without LTO (Cargo.toml says why).
PROFILE=e2e
FOREIGN=.ci/e2e-foreign-policies.yaml
what="${1:-all}"

case "$what" in
  all | local | node) ;;
  *) echo "usage: .ci/e2e.sh [local|node]" >&2; exit 2 ;;
esac
if [[ ! -x "$KIT/up" ]]; then
  if [[ "$what" == all ]]; then
    echo "e2e: skipped (no Kubernetes kit at $KIT; see tests/e2e.rs to run it against a cluster of yours)"
    exit 0
  fi
  echo "e2e: no Kubernetes kit at $KIT (set TRUSTGATE_K8S_KIT)" >&2
  exit 1
fi
KIT="$(cd "$KIT" && pwd)"

t0=$SECONDS
step_name="" step_start=$SECONDS
step() {
  finish_step
  step_name="$*" step_start=$SECONDS
  printf '\n==> e2e: %s\n' "$step_name"
}
finish_step() {
  if [[ -n "$step_name" ]]; then
    printf '<== e2e: %s: %ss\n' "$step_name" "$((SECONDS - step_start))"
    timings+=("$(printf '%5ss  %s' "$((SECONDS - step_start))" "$step_name")")
  fi
  step_name=""
}
timings=()

cleanups=()
cleanup() {
  local rc=$?
  finish_step
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
    printf '\n==> e2e: teardown: %s\n' "${cleanups[i]}"
    eval "${cleanups[i]}" || echo "e2e: teardown step failed (continuing): ${cleanups[i]}" >&2
  done
  printf '\ne2e step durations:\n'
  printf '  %s\n' "${timings[@]}"
  printf '  %5ss  total\n' "$((SECONDS - t0))"
  exit "$rc"
}
trap cleanup EXIT

# Every e2e test file runs in local mode; those that adapt to TRUSTGATE_E2E_MODE=in-cluster run
# again against the chart's webhook (the others start a trustgate process of their own).
E2E_TESTS=(--test e2e --test e2e_semantics --test e2e_cluster_check --test e2e_policy_reports --test e2e_inheritance --test e2e_bodies)
E2E_IN_CLUSTER=(--test e2e --test e2e_semantics --test e2e_inheritance --test e2e_bodies)
# The hostile client of tests/e2e_bodies.rs (tools/body-attacker), and its image in node mode.
ATTACKER=trustgate-body-attacker
ATTACKER_IMAGE=trustgate-body-attacker:e2e

# The test binaries (debug profile, shared with `cargo test`) and the binary they run locally.
build_tests() {
  step "build the e2e test binaries"
  cargo test --locked "${E2E_TESTS[@]}" --no-run
  cargo build --locked -p "$ATTACKER"
}

run_local() {
  build_tests
  step "local: start the kit's control plane"
  eval "$("$KIT/up")"
  [[ "${E2E_KEEP_CLUSTER:-0}" == 1 ]] || cleanups+=("'$KIT/down'")
  local kubectl=("$KIT/kubectl")
  step "local: CRD and foreign policies"
  # The binary the test build made (`cargo run` would build another: dev-dependencies change
  # the features of the test build's dependencies).
  target/debug/trustgate crd | "${kubectl[@]}" apply --server-side --force-conflicts -f -
  "${kubectl[@]}" wait --for=condition=Established --timeout=60s crd/trustedregistrypolicies.trustgate.dev
  "${kubectl[@]}" apply --server-side --force-conflicts -f "$FOREIGN"
  cleanups+=("'$KIT/kubectl' delete --ignore-not-found -f '$FOREIGN'")
  step "local: cargo test ${E2E_TESTS[*]} -- --ignored"
  cargo test --locked "${E2E_TESTS[@]}" -- --ignored --test-threads=1 --show-output
  finish_step
}

run_node() {
  [[ "$(id -u)" == 0 ]] || { echo "e2e node mode needs root (the kit's node runs containers)" >&2; exit 1; }
  step "node: cargo build --profile $PROFILE"
  cargo build --locked --profile "$PROFILE"
  # Its own invocation: the attacker's dependency features must not reach the image's binary.
  cargo build --locked --profile "$PROFILE" -p "$ATTACKER"
  build_tests
  step "node: helm (pinned, .ci/tools.sh)"
  # shellcheck source=tools.sh
  source .ci/tools.sh
  step "node: start the kit's control plane and node"
  "$KIT/up" --node >/dev/null
  [[ "${E2E_KEEP_CLUSTER:-0}" == 1 ]] || cleanups+=("'$KIT/down' --node")
  step "node: image $IMAGE"
  "$KIT/image" "target/$PROFILE/trustgate" "$IMAGE"
  "$KIT/image" "target/$PROFILE/body-attacker" "$ATTACKER_IMAGE"
  local in_ns=("$KIT/in-ns")

  step "node: remove what an earlier run left"
  if "${in_ns[@]}" "$HELM" status "$RELEASE" -n "$RELEASE_NS" >/dev/null 2>&1; then
    "${in_ns[@]}" "$HELM" uninstall "$RELEASE" -n "$RELEASE_NS" --wait --timeout 2m
  fi
  # A failed install can leave cluster-wide objects behind; a webhook configuration among them
  # would send every review to a Service that is gone.
  "${in_ns[@]}" kubectl delete validatingwebhookconfiguration,clusterrole,clusterrolebinding \
    -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/managed-by=Helm" --ignore-not-found
  "${in_ns[@]}" kubectl delete namespace -l trustgate.dev/e2e=true --wait=false --ignore-not-found
  # helm installs crds/ only when the CRD is absent: apply this build's, so a stale one from an
  # earlier run is replaced.
  "${in_ns[@]}" kubectl apply --server-side --force-conflicts -f charts/trustgate/crds/
  "${in_ns[@]}" kubectl wait --for=condition=Established --timeout=60s crd/trustedregistrypolicies.trustgate.dev
  "${in_ns[@]}" kubectl apply --server-side --force-conflicts -f "$FOREIGN"
  cleanups+=("'$KIT/in-ns' kubectl delete --ignore-not-found -f '$FOREIGN'")

  step "node: helm install"
  cleanups+=("'$KIT/in-ns' '$HELM' uninstall '$RELEASE' -n '$RELEASE_NS' --wait --timeout 2m --ignore-not-found")
  # A short audit interval, so that the audit test sees a run within a minute.
  "${in_ns[@]}" "$HELM" install "$RELEASE" charts/trustgate -n "$RELEASE_NS" --create-namespace \
    --set image.repository=trustgate --set image.tag=e2e --set image.pullPolicy=Never \
    --set audit.interval=15s --wait --timeout 3m
  "${in_ns[@]}" kubectl -n "$RELEASE_NS" get pods -o wide

  step "node: cargo test ${E2E_IN_CLUSTER[*]} -- --ignored (in-cluster, inside the netns)"
  TRUSTGATE_E2E_MODE=in-cluster TRUSTGATE_E2E_AUDIT_TIMEOUT=90 \
    TRUSTGATE_E2E_HELM="$HELM" TRUSTGATE_E2E_RELEASE="$RELEASE_NS/$RELEASE" \
    "${in_ns[@]}" cargo test --offline --locked "${E2E_IN_CLUSTER[@]}" -- --ignored --test-threads=1 --show-output
  finish_step
}

case "$what" in
  local) run_local ;;
  node) run_node ;;
  all)
    run_local
    run_node
    ;;
esac
echo "e2e: passed ($what)"
