#!/usr/bin/env bash
# Delete a Cloud TPU VM or pod slice (its disks go with it; a gs:// workdir stays).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/tpu_delete.sh [options]

Deletes the TPU with gcloud compute tpus tpu-vm delete. Everything on its workers' disks goes;
copy a local workdir back first (launch/fetch.sh). gcloud asks to confirm unless --yes.

Example:
  launch/tpu_delete.sh --tpu-name my-v4 --zone us-central2-b --yes"

declare_tpu_opts
flag yes YES "do not ask for confirmation (gcloud --quiet)"
flag async ASYNC "return without waiting for the deletion to finish"
parse_opts "$@"

cloud_scope
args=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GC_SCOPE[@]}")
if ((YES)); then args+=(--quiet); fi
if ((ASYNC)); then args+=(--async); fi
run "${args[@]}"
