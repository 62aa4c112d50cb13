#!/usr/bin/env bash
# Put the project on the training machine(s) and install it: every TPU worker, or the GPU machine.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/setup.sh --target tpu|gpu [options]

Copies this checkout (its tracked and untracked-but-not-ignored files; or clones --git-url) to
REMOTE_DIR on every TPU worker (--worker=all) or on the GPU machine, then runs
launch/remote_setup.sh there: a Python >= 3.11 venv with pip install -e '.[tpu]' (TPU) or
'.[cuda12]' (GPU). Safe to re-run: pip is skipped when nothing changed.
With --target gpu and neither --host nor --vm, it installs on this machine.

Examples:
  launch/setup.sh --target tpu --tpu-name my-v4 --zone us-central2-b
  launch/setup.sh --target gpu --host me@gpu-box
  launch/setup.sh --target tpu --tpu-name my-v4 --zone us-central2-b --git-url https://github.com/me/flowers_jax --git-ref v0.1"

opt target TARGET "tpu|gpu" tpu "where to install"
declare_tpu_opts
declare_gpu_opts
declare_repo_opts
opt worker WORKER W all "TPU worker(s) to set up: all, 0, 1-3 (tpu)"
opt extra PIP_EXTRA EXTRA "" "optional dependency set (default: tpu for --target tpu, cuda12 for gpu)"
opt git-url GIT_URL URL "" "clone this repository there instead of copying this checkout"
opt git-ref GIT_REF REF HEAD "branch, tag or commit to check out with --git-url (HEAD: the default branch)"
flag force FORCE "reinstall even when nothing changed"
parse_opts "$@"

case $TARGET in
  tpu) PIP_EXTRA=${PIP_EXTRA:-tpu} ;;
  gpu) PIP_EXTRA=${PIP_EXTRA:-cuda12} ;;
  *) die "--target must be tpu or gpu, got '$TARGET' (the local target needs no setup: pip install -e . here)" ;;
esac
where=$TARGET
if [[ $TARGET == gpu ]]; then where=gpu-$(gpu_where); fi
if [[ $TARGET == tpu ]]; then cloud_scope; fi
if [[ $where == gpu-vm ]]; then cloud_scope; fi

tarball=${TMPDIR:-/tmp}/flowers_jax-src.tgz
remote_tarball=flowers_jax-src.tgz
dir=$(remote_dir)
if [[ $where == gpu-here ]]; then dir=$ROOT; fi

# 1. The code.
fetch_code=""
if [[ $where == gpu-here ]]; then
  note "installing this checkout ($ROOT) on this machine"
elif [[ -n $GIT_URL ]]; then
  fetch_code="{ test -d $(shquote "$dir/.git") || git clone --quiet $(shquote "$GIT_URL") $(shquote "$dir"); }"
  fetch_code+=" && git -C $(shquote "$dir") fetch --quiet origin $(shquote "$GIT_REF")"
  fetch_code+=" && git -C $(shquote "$dir") checkout --quiet --force FETCH_HEAD && "
else
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files, less those deleted from the working tree.
    run_shell "cd $(shquote "$ROOT") && git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c 'for f do test -e \"\$f\" && printf \"%s\\0\" \"\$f\"; done' sh | COPYFILE_DISABLE=1 tar --null -T - -czf $(shquote "$tarball")"
  else
    run_shell "COPYFILE_DISABLE=1 tar -C $(shquote "$ROOT") --exclude=./.git --exclude=./.venv --exclude=./workdirs --exclude=node_modules -czf $(shquote "$tarball") ."
  fi
  case $where in
    tpu) run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$remote_tarball" "${GC_SCOPE[@]}" "--worker=$WORKER" ;;
    gpu-vm) run gcloud compute scp "$tarball" "$VM:$remote_tarball" "${GC_SCOPE[@]}" ;;
    gpu-host) run scp "$tarball" "$HOST:$remote_tarball" ;;
  esac
  fetch_code="mkdir -p $(shquote "$dir") && tar -xzf $remote_tarball -C $(shquote "$dir") && rm -f $remote_tarball && "
fi

# 2. The venv, on every worker at once.
setup_args=(bash launch/remote_setup.sh --extra "$PIP_EXTRA")
if ((FORCE)); then setup_args+=(--force); fi
cmd="${fetch_code}cd $(shquote "$dir") && $(shjoin "${setup_args[@]}")"
case $where in
  tpu) tpu_ssh "$WORKER" "$cmd" ;;
  *) gpu_ssh "$cmd" ;;
esac
