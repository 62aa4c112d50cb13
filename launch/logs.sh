#!/usr/bin/env bash
# Follow the training log on a TPU worker or on the GPU machine.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/logs.sh --target tpu|gpu [options]

Shows (and follows, until Ctrl-C) the log launch/remote_train.sh appends to on the machine:
~/flowers_jax_logs/train.log. On a pod each worker has its own; worker 0 is the one to watch.
Metrics also go to the workdir (JSON lines, TensorBoard): tensorboard --logdir gs://BUCKET/PATH.

Examples:
  launch/logs.sh --target tpu --tpu-name my-v4 --zone us-central2-b
  launch/logs.sh --target tpu --tpu-name my-pod --zone us-central2-b --worker all --no-follow
  launch/logs.sh --target gpu --host me@gpu-box"

opt target TARGET "tpu|gpu" tpu "where the training runs"
declare_tpu_opts
declare_gpu_opts
opt worker WORKER W 0 "TPU worker(s): 0, 3, all"
opt lines LINES N 100 "how many lines of history to show first"
flag no-follow NO_FOLLOW "print and exit instead of following"
opt log-file LOG_FILE PATH flowers_jax_logs/train.log "the log, relative to the home directory"
parse_opts "$@"

require_int LINES
tail_args=(tail -n "$LINES")
if ((!NO_FOLLOW)); then tail_args+=(-F); fi
case $TARGET in
  tpu)
    cloud_scope
    tpu_ssh "$WORKER" "$(shjoin "${tail_args[@]}" "$LOG_FILE")"
    ;;
  gpu)
    if [[ $(gpu_where) == here && $LOG_FILE != /* ]]; then LOG_FILE=$HOME/$LOG_FILE; fi
    gpu_ssh "$(shjoin "${tail_args[@]}" "$LOG_FILE")"
    ;;
  *) die "--target must be tpu or gpu, got '$TARGET' (local runs print to the terminal)" ;;
esac
