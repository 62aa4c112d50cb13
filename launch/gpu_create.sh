#!/usr/bin/env bash
# Create a Compute Engine VM with an NVIDIA GPU (Deep Learning VM image, driver installed).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/gpu_create.sh --vm NAME --zone ZONE [options]

Creates a GPU VM with gcloud compute instances create, from Google's Deep Learning VM image
(CUDA and the NVIDIA driver preinstalled). Then:
  launch/setup.sh --target gpu --vm NAME --zone ZONE
  launch/train.sh --target gpu --vm NAME --zone ZONE --workdir gs://BUCKET/PATH
Already have a GPU machine? Skip this and use --host USER@HOST with setup.sh and train.sh.

Examples:
  launch/gpu_create.sh --vm flowers-gpu --zone us-central1-a
  launch/gpu_create.sh --vm flowers-a100 --zone us-central1-a --machine-type a2-highgpu-1g --gpu-type nvidia-tesla-a100 --spot"

declare_gpu_opts
opt machine-type MACHINE_TYPE TYPE g2-standard-8 "machine type (g2-* come with L4 GPUs, a2-* with A100s)"
opt gpu-type GPU_TYPE TYPE nvidia-l4 "accelerator type: nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100, ..."
opt gpu-count GPU_COUNT N 1 "number of GPUs"
opt image-family IMAGE_FAMILY FAMILY common-cu128-ubuntu-2204-nvidia-570 "boot image family (see: gcloud compute images list --project deeplearning-platform-release)"
opt image-project IMAGE_PROJECT PROJECT deeplearning-platform-release "project of the boot image"
opt boot-disk-size BOOT_DISK_SIZE SIZE 200GB "boot disk size"
flag spot SPOT "spot VM (cheap, may be stopped at any time; start it again and re-run train.sh to resume)"
list create-flag CREATE_FLAGS FLAG "extra flag for 'gcloud compute instances create'"
parse_opts "$@"

require VM "a name for the new VM, e.g. flowers-gpu"
cloud_scope
require_int GPU_COUNT
args=(gcloud compute instances create "$VM" "${GC_SCOPE[@]}"
  "--machine-type=$MACHINE_TYPE" "--accelerator=type=$GPU_TYPE,count=$GPU_COUNT"
  "--image-family=$IMAGE_FAMILY" "--image-project=$IMAGE_PROJECT" "--boot-disk-size=$BOOT_DISK_SIZE"
  --maintenance-policy=TERMINATE --metadata=install-nvidia-driver=True --scopes=cloud-platform)
if ((SPOT)); then args+=(--provisioning-model=SPOT --instance-termination-action=STOP); fi
args+=("${CREATE_FLAGS[@]}")
run "${args[@]}"
