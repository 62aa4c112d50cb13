#!/usr/bin/env bash
# Delete a Compute Engine GPU VM made by gpu_create.sh.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/gpu_delete.sh --vm NAME --zone ZONE [--yes]

Deletes the VM and its boot disk; copy a local workdir back first (launch/fetch.sh)."

declare_gpu_opts
flag yes YES "do not ask for confirmation (gcloud --quiet)"
parse_opts "$@"

require VM "the VM to delete"
cloud_scope
args=(gcloud compute instances delete "$VM" "${GC_SCOPE[@]}")
if ((YES)); then args+=(--quiet); fi
run "${args[@]}"
