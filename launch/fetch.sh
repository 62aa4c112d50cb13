#!/usr/bin/env bash
# Copy a run's workdir (checkpoints, metrics, curves) back to this machine.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/fetch.sh --workdir W [--dest DIR] [options]

Copies the workdir into DEST/<last part of W> (default DEST: workdirs/ in this checkout):
  gs://...  with gcloud storage rsync (any target; only what changed);
  a path    from TPU worker 0 (--target tpu) or the GPU machine (--target gpu), by scp.
            A relative W is relative to the project copy there (where training ran).

Examples:
  launch/fetch.sh --workdir gs://my-bucket/flowers/b0
  launch/fetch.sh --target tpu --tpu-name my-v4 --zone us-central2-b --workdir workdirs/b0
  launch/fetch.sh --target gpu --host me@gpu-box --workdir workdirs/b0 --dest /tmp/runs"

opt target TARGET "tpu|gpu" tpu "where training ran (for a workdir that is not on gs://)"
opt workdir WORKDIR DIR "" "the run's workdir, as given to train.sh"
opt dest DEST DIR "$ROOT/workdirs" "local folder to copy into"
declare_tpu_opts
declare_gpu_opts
declare_repo_opts
opt worker WORKER W 0 "TPU worker to copy from"
parse_opts "$@"

require WORKDIR "the workdir given to train.sh, e.g. gs://my-bucket/flowers/b0"
WORKDIR=${WORKDIR%/}
name=$(basename "$WORKDIR")

if is_gs "$WORKDIR"; then
  run mkdir -p "$DEST/$name"
  run gcloud storage rsync --recursive "$WORKDIR" "$DEST/$name"
  exit 0
fi

remote=$WORKDIR
if [[ $remote != /* ]]; then remote=$(remote_dir)/$remote; fi
run mkdir -p "$DEST"
case $TARGET in
  tpu)
    cloud_scope
    note "a workdir on worker disks: copying worker $WORKER's (on a pod use gs://, shared by all hosts)"
    run gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$remote" "$DEST" "${GC_SCOPE[@]}" "--worker=$WORKER"
    ;;
  gpu)
    case $(gpu_where) in
      vm) cloud_scope; run gcloud compute scp --recurse "$VM:$remote" "$DEST" "${GC_SCOPE[@]}" ;;
      host) run scp -r "$HOST:$remote" "$DEST" ;;
      here) die "--target gpu without --host or --vm means this machine: $WORKDIR is already here" ;;
    esac
    ;;
  *) die "--target must be tpu or gpu, got '$TARGET'" ;;
esac
