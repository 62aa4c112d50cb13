#!/usr/bin/env bash
# Stage the competition TFRecords: to a GCS bucket, or onto every TPU worker's local disk.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/stage_data.sh --src DIR|gs://... --dest gs://...|PATH [options]

Copies the Kaggle 'Flower Classification with TPUs' layout (tfrecords-jpeg-{192,224,331,512}x.../
{train,val,test}/*.tfrec, or anything flowers_jax.data.convert wrote) from --src to:
  gs://BUCKET/PATH  a bucket every host reads (the usual choice for pods: gcloud storage rsync);
  PATH              the local disk of every TPU worker (--tpu-name/--zone; --worker=all).
Re-running copies only what changed. --sizes limits it to some image sizes (512 is the big one).
Then point the run at it: launch/train.sh ... -- --config.data.data_dir=DEST

Examples:
  launch/stage_data.sh --src ~/data/flowers --dest gs://my-bucket/flowers-data --sizes 224
  launch/stage_data.sh --src gs://my-bucket/flowers-data --dest /home/me/flowers-data --tpu-name my-v4 --zone us-central2-b"

opt src SRC "DIR|gs://..." "" "where the TFRecords are now"
opt dest DEST "gs://...|PATH" "" "where they go: a gs:// prefix, or a path on every TPU worker"
opt sizes SIZES "S[,S...]" "" "only these image sizes, e.g. 224 or 224,512 (default: all of --src)"
declare_tpu_opts
opt worker WORKER W all "TPU worker(s) to copy to when --dest is a worker path"
parse_opts "$@"

require SRC "the folder (or gs:// prefix) holding the tfrecords-jpeg-* folders"
require DEST "gs://BUCKET/PATH for a bucket, or a path for every TPU worker's disk"
SRC=${SRC%/} DEST=${DEST%/}

items=()
if [[ -n $SIZES ]]; then
  IFS=, read -ra sizes <<<"$SIZES"
  for s in "${sizes[@]}"; do
    [[ $s =~ ^[0-9]+$ ]] || die "--sizes takes numbers like 224,512, got '$SIZES'"
    items+=("tfrecords-jpeg-${s}x${s}")
  done
else
  items+=("")
fi
if ! is_gs "$SRC"; then
  [[ -d $SRC ]] || die "--src $SRC is not a folder (give the folder that holds tfrecords-jpeg-*/)"
  for it in "${items[@]}"; do
    if [[ -n $it && ! -d $SRC/$it ]]; then die "$SRC/$it does not exist (sizes there: $(cd "$SRC" && echo tfrecords-jpeg-*))"; fi
  done
  if [[ -z ${items[0]} ]] && ! compgen -G "$SRC/tfrecords-jpeg-*" >/dev/null; then
    warn "$SRC has no tfrecords-jpeg-* folder: copying it as it is"
  fi
fi

path_of() { if [[ -n $2 ]]; then printf '%s/%s' "$1" "$2"; else printf '%s' "$1"; fi; }

if is_gs "$DEST"; then
  for it in "${items[@]}"; do
    run gcloud storage rsync --recursive "$(path_of "$SRC" "$it")" "$(path_of "$DEST" "$it")"
  done
  exit 0
fi

# Onto every worker's disk.
cloud_scope
if is_gs "$SRC"; then
  cmd="mkdir -p $(shquote "$DEST")"
  for it in "${items[@]}"; do
    cmd+=" && gcloud storage rsync --recursive $(shjoin "$(path_of "$SRC" "$it")" "$(path_of "$DEST" "$it")")"
  done
  tpu_ssh "$WORKER" "$cmd"
else
  note "copying from this machine to every worker is slow for big sets: staging to gs:// first is faster"
  tpu_ssh "$WORKER" "mkdir -p $(shquote "$DEST")"
  for it in "${items[@]}"; do
    if [[ -n $it ]]; then
      run gcloud compute tpus tpu-vm scp --recurse "$SRC/$it" "$TPU_NAME:$DEST/" "${GC_SCOPE[@]}" "--worker=$WORKER"
    else
      run gcloud compute tpus tpu-vm scp --recurse "$SRC/." "$TPU_NAME:$DEST/" "${GC_SCOPE[@]}" "--worker=$WORKER"
    fi
  done
fi
