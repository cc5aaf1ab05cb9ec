#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer) of the three readers of untrusted input:
#   reference  image references (src/engine/reference.rs)
#   review     AdmissionReview and ImageReview bodies (src/admission/review.rs)
#   manifest   YAML/JSON manifest streams as `trustgate check` reads them (src/api/manifest.rs,
#              src/api/stream.rs, the shortcut reader of src/cli/check.rs)
# The properties are in fuzz/src/lib.rs.
#
#   bash .ci/fuzz.sh                 every target for 20 s (what CI runs)
#   bash .ci/fuzz.sh TARGET SECONDS  one target, longer (`just fuzz manifest 600`)
#
# cargo-fuzz (pinned) is installed into .tools/cargo. It needs nightly-only rustc flags; this
# machine has only the stable toolchain, so RUSTC_BOOTSTRAP=1 enables them for this build only
# (the fuzz crate's own target dir, never the product's build). No sanitizer: the code is
# `unsafe_code = "forbid"`, so a memory sanitizer finds nothing that a panic would not;
# debug assertions and overflow checks are on. The corpus grows in fuzz/corpus/TARGET (git-
# ignored but for the seeds in fuzz/seeds/TARGET); a crash is written to fuzz/artifacts/TARGET
# and fails the run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CARGO_FUZZ_VERSION="0.13.1"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
export PATH="$TOOLS_DIR/cargo/bin:$PATH"
if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS_DIR/cargo" >&2
  cargo install --quiet --locked --root "$TOOLS_DIR/cargo" "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
targets=(reference review manifest)
seconds=20
if (( $# > 0 )); then
  targets=("$1")
  seconds="${2:-600}"
fi

flags=(--sanitizer none --debug-assertions --release)
start=$SECONDS
cargo fuzz build "${flags[@]}" 2>&1 | tail -n 3 || { echo "[fuzz] build failed" >&2; exit 1; }
echo "[fuzz] built in $((SECONDS - start)) s" >&2

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  echo "[fuzz] $target for $seconds s (corpus $corpus, seeds fuzz/seeds/$target)" >&2
  # -max_len: room for a whole Deployment in the manifest target; the others are short.
  log="fuzz/artifacts/$target.log"
  if ! cargo fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[fuzz] $target failed: log $log, input in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | tr '\n' ' ' >&2
  grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -n 1 >&2
done
