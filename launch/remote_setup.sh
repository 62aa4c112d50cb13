#!/usr/bin/env bash
# On the machine that trains (each TPU worker, the GPU box): a Python >= 3.11 venv with the project.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/remote_setup.sh [options]

Runs ON the training machine, from the project's copy there (launch/setup.sh calls it on every
TPU worker, or on the GPU machine). Makes a venv with Python >= 3.11 (TPU VM images ship 3.10:
then uv fetches 3.11) and installs the project into it: pip install -e '.[EXTRA]'.
Idempotent: a second run with the same pyproject.toml and extra only checks the install.

Examples:
  bash launch/remote_setup.sh --extra tpu
  bash launch/remote_setup.sh --extra cuda12 --venv ~/venvs/flowers"

opt extra PIP_EXTRA EXTRA tpu "optional dependency set: tpu, cuda12, cuda13, or none"
opt venv VENV DIR "$HOME/flowers_jax_venv" "the venv to create or reuse"
opt python-version PYTHON_VERSION X.Y 3.11 "Python to fetch with uv when the machine has none >= 3.11"
flag force FORCE "reinstall even when the venv is up to date"
parse_opts "$@"

cd "$ROOT"
[[ -f pyproject.toml ]] || die "no pyproject.toml in $ROOT: run this from the project's copy"
case $PIP_EXTRA in
  none | "") spec=. ;;
  tpu | cuda12 | cuda13) spec=".[$PIP_EXTRA]" ;;
  *) die "--extra must be tpu, cuda12, cuda13 or none, got '$PIP_EXTRA'" ;;
esac

py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
  local c
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null && py_ok "$c"; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

ensure_uv() {
  if command -v uv >/dev/null; then return 0; fi
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv >/dev/null && return 0
  if ! python3 -m pip --version >/dev/null 2>&1; then
    run sudo apt-get update -q
    run sudo apt-get install -y -q python3-pip
  fi
  run python3 -m pip install --user --quiet uv
}

make_venv() {
  local py
  if [[ -x $VENV/bin/python ]] && py_ok "$VENV/bin/python"; then
    note "reusing $VENV ($("$VENV/bin/python" --version 2>&1))"
    return 0
  fi
  if py=$(find_python) && { ((DRY_RUN)) || "$py" -m venv --help >/dev/null 2>&1; }; then
    if run "$py" -m venv "$VENV"; then return 0; fi
    warn "$py -m venv failed (no python3-venv package?): using uv instead"
  else
    note "no Python >= 3.11 here: fetching $PYTHON_VERSION with uv"
  fi
  ensure_uv
  run uv venv --seed --python "$PYTHON_VERSION" "$VENV"
}

make_venv
stamp_file=$VENV/.flowers_jax_setup
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $PIP_EXTRA"
if ((!FORCE)) && [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
  note "$VENV already has this pyproject.toml with '$PIP_EXTRA': skipping pip (--force reinstalls)"
else
  run "$VENV/bin/python" -m pip install --quiet --upgrade pip
  run "$VENV/bin/python" -m pip install --quiet -e "$spec"
  if ((!DRY_RUN)); then printf '%s\n' "$stamp" >"$stamp_file"; fi
fi
# Import only: touching the TPU here would make one worker of a pod wait for the others.
run "$VENV/bin/python" -c 'import jax, flowers_jax; print("ok: jax", jax.__version__, "flowers_jax", flowers_jax.__file__)'
if [[ $PIP_EXTRA == cuda* ]] && command -v nvidia-smi >/dev/null; then
  run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
