#!/usr/bin/env bash
# One front end for training: N local processes, every worker of a TPU pod slice, or a GPU machine.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/train.sh --target local|tpu|gpu --workdir W [--config FILE] [options] [-- MAIN_FLAGS...]

Runs python -m flowers_jax.main --config FILE --workdir W MAIN_FLAGS... :
  local  N processes on this machine as N JAX hosts (launch/local.sh: --coordinator_address
         127.0.0.1:PORT --num_processes N --process_id i, CPU collectives); N=1 is a plain run.
  tpu    on every worker of the TPU VM / pod slice at once (gcloud ... ssh --worker=all), through
         launch/remote_train.sh; jax.distributed.initialize() finds the other hosts by itself.
  gpu    on a GPU machine (--host, --vm) or on this one, through launch/remote_train.sh.
Re-running the same command resumes from the workdir's latest checkpoint; a finished run leaves
W/DONE. For spot TPUs, launch/run_until_done.sh repeats this until W/DONE exists.
Any option this script does not know is handed to launch/local.sh (target local).

Examples:
  launch/train.sh --target local -n 2 --workdir /tmp/w2 --config configs/smoke.py
  launch/train.sh --target tpu --tpu-name my-v4 --zone us-central2-b --workdir gs://my-bucket/flowers/b0 \\
      --config configs/effnet_b0.py -- --config.data.data_dir=gs://my-bucket/flowers-data
  launch/train.sh --target gpu --host me@gpu-box --workdir gs://my-bucket/flowers/b0-gpu"

opt target TARGET "local|tpu|gpu" local "where to train"
declare_train_opts
opt python PYTHON PATH "" "Python for --target local (default: .venv/bin/python if present, else python3)"
declare_tpu_opts
declare_gpu_opts
declare_repo_opts
flag replace REPLACE "stop a training this launcher started earlier on the machine(s), then start (tpu/gpu)"
flag detach DETACH "start in the background on the machine(s) and return; follow with launch/logs.sh (tpu/gpu)"
ALLOW_PASSTHROUGH=1
parse_opts "$@"

require WORKDIR "the run directory (checkpoints, metrics, DONE marker); on a TPU pod use gs://BUCKET/PATH, shared by all hosts"
require CONFIG "a run configuration such as configs/effnet_b0.py"
if [[ $TARGET == local ]] && ((REPLACE || DETACH)); then
  die "--replace and --detach are for --target tpu or gpu (a local run stops with its terminal)"
fi
if [[ $TARGET != local ]] && ((${#PASSTHROUGH[@]})); then
  die "unknown option ${PASSTHROUGH[0]} for --target $TARGET (see $SCRIPT --help; flags for flowers_jax.main go after --)"
fi

# remote_train_cmd DIR: the line of shell that starts training from the project copy in DIR.
remote_train_cmd() {
  local dir=$1 rt=(bash launch/remote_train.sh)
  if ((REPLACE)); then rt+=(--replace); fi
  if ((DETACH)); then rt+=(--detach); fi
  main_args
  printf 'cd %s && %s' "$(shquote "$dir")" "$(shjoin "${rt[@]}" -- "${MAIN_ARGS[@]}")"
}

case $TARGET in
  local)
    if [[ -z $PYTHON ]]; then
      if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
    fi
    main_args
    local_args=("${PASSTHROUGH[@]}")
    if ((DRY_RUN)); then local_args+=(--dry-run); fi
    exec "$LAUNCH_DIR/local.sh" "${local_args[@]}" -- "$PYTHON" -m flowers_jax.main "${MAIN_ARGS[@]}"
    ;;
  tpu)
    cloud_scope
    if ! is_gs "$WORKDIR"; then
      warn "workdir $WORKDIR is not on GCS: on a multi-host slice every host needs the same workdir (use gs://BUCKET/PATH); fine on a single-host TPU VM"
    fi
    CONFIG=$(repo_relative "$CONFIG")
    tpu_ssh all "$(remote_train_cmd "$(remote_dir)")"
    ;;
  gpu)
    where=$(gpu_where)
    if [[ $where == here ]]; then
      dir=$ROOT
    else
      CONFIG=$(repo_relative "$CONFIG")
      dir=$(remote_dir)
    fi
    gpu_ssh "$(remote_train_cmd "$dir")"
    ;;
  *) die "--target must be local, tpu or gpu, got '$TARGET'" ;;
esac
