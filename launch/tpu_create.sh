#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice (on-demand, spot or preemptible).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/tpu_create.sh [options]

Creates the TPU VM (one host: v4-8, v5litepod-8, v6e-8) or pod slice (several hosts: v4-32, ...)
with gcloud compute tpus tpu-vm create. If a TPU of that name already exists it says so and does
nothing (so the whole launch sequence can be re-run). Then: launch/setup.sh, launch/train.sh.

Examples:
  launch/tpu_create.sh --tpu-name my-v4 --zone us-central2-b --accelerator-type v4-8
  launch/tpu_create.sh --tpu-name my-pod --zone us-central2-b --accelerator-type v4-32 --spot
  FLOWERS_ZONE=us-west4-a launch/tpu_create.sh --tpu-name my-v5e --accelerator-type v5litepod-8"

declare_tpu_opts
declare_tpu_create_opts
parse_opts "$@"

cloud_scope
if [[ -z $RUNTIME_VERSION ]]; then
  RUNTIME_VERSION=$(tpu_runtime_for "$ACCELERATOR_TYPE") ||
    die "no default runtime for accelerator type '$ACCELERATOR_TYPE': give --runtime-version (list them: gcloud compute tpus tpu-vm versions list --zone=$ZONE)"
fi
if ((SPOT && PREEMPTIBLE)); then die "--spot and --preemptible exclude each other: pick one"; fi

args=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GC_SCOPE[@]}"
  "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if ((SPOT)); then args+=(--spot); fi
if ((PREEMPTIBLE)); then args+=(--preemptible); fi
args+=("${CREATE_FLAGS[@]}")

if ((!DRY_RUN)); then
  state=$(tpu_state)
  if [[ $state != NOT_FOUND && $state != UNKNOWN ]]; then
    log "TPU $TPU_NAME already exists in $ZONE (state $state): not creating it again"
    exit 0
  fi
fi
run "${args[@]}"
