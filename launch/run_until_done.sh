#!/usr/bin/env bash
# Keep a (spot) TPU training going until the workdir says DONE: re-create, set up, resume.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/run_until_done.sh --tpu-name NAME --zone ZONE --workdir gs://BUCKET/PATH [options] [-- MAIN_FLAGS...]

Until WORKDIR/DONE exists (written by flowers_jax.main when training has finished), each attempt:
  1. checks the TPU's state: READY goes on; PREEMPTED/TERMINATED (spot, preemptible) is deleted
     and re-created; absent is created; STOPPED is started; CREATING/REPAIRING/... is waited for;
  2. runs launch/setup.sh after a (re-)creation (and on the first attempt: cheap when set up);
  3. runs launch/train.sh --target tpu --replace, which resumes from the latest checkpoint;
then sleeps BACKOFF, 2xBACKOFF, ... (at most MAX_BACKOFF) before the next attempt. It stops
with status 0 once DONE exists, or 1 after MAX_ATTEMPTS. Safe to stop and run again.
The workdir must be on gs://: a spot TPU's disks go with it.
Run it where it can keep running (a small VM, tmux, nohup); it logs every decision.

Example:
  launch/run_until_done.sh --tpu-name my-pod --zone us-central2-b --accelerator-type v4-32 --spot \\
      --workdir gs://my-bucket/flowers/b0 --config configs/effnet_b0.py -- --config.data.data_dir=gs://my-bucket/flowers-data"

declare_tpu_opts
declare_tpu_create_opts
declare_train_opts
declare_repo_opts
list setup-flag SETUP_FLAGS FLAG "extra flag for launch/setup.sh, e.g. --setup-flag=--git-url=https://..."
opt max-attempts MAX_ATTEMPTS N 20 "attempts before giving up"
opt backoff-s BACKOFF_S SECONDS 60 "wait after the first failed attempt; doubles each time"
opt max-backoff-s MAX_BACKOFF_S SECONDS 900 "longest wait between attempts"
opt poll-s POLL_S SECONDS 30 "how often to look at a TPU that is being created, started or repaired"
opt wait-ready-s WAIT_READY_S SECONDS 1800 "how long a TPU may take to become READY before the attempt counts as failed"
opt log-file LOOP_LOG FILE "" "also append this loop's log to FILE"
parse_opts "$@"

cloud_scope
require WORKDIR "the run directory, gs://BUCKET/PATH: checkpoints and the DONE marker must outlive the TPU"
for v in MAX_ATTEMPTS BACKOFF_S MAX_BACKOFF_S POLL_S WAIT_READY_S; do require_int "$v"; done
if ! is_gs "$WORKDIR"; then
  warn "workdir $WORKDIR is on the TPU's own disk: a preempted (deleted) TPU loses it and training restarts from scratch; use gs://BUCKET/PATH"
fi
if [[ -n $LOOP_LOG ]] && ((!DRY_RUN)); then exec 2> >(tee -a "$LOOP_LOG" >&2); fi

tpu_args=(--tpu-name "$TPU_NAME" "--zone=$ZONE")
if [[ -n $PROJECT ]]; then tpu_args+=("--project=$PROJECT"); fi
create_args=("${tpu_args[@]}" --accelerator-type "$ACCELERATOR_TYPE")
if [[ -n $RUNTIME_VERSION ]]; then create_args+=(--runtime-version "$RUNTIME_VERSION"); fi
if ((SPOT)); then create_args+=(--spot); fi
if ((PREEMPTIBLE)); then create_args+=(--preemptible); fi
for f in "${CREATE_FLAGS[@]}"; do create_args+=("--create-flag=$f"); done
setup_args=(--target tpu "${tpu_args[@]}" --remote-dir "$REMOTE_DIR" "${SETUP_FLAGS[@]}")
train_args=(--target tpu "${tpu_args[@]}" --remote-dir "$REMOTE_DIR" --replace
  --config "$CONFIG" --workdir "$WORKDIR" -- "${EXTRA_ARGS[@]}")

# The command that succeeds iff WORKDIR/DONE exists.
done_argv() {
  if is_gs "$WORKDIR"; then
    DONE_ARGV=(gcloud storage ls "$WORKDIR/DONE")
  else
    local w=$WORKDIR
    if [[ $w != /* ]]; then w=$(remote_dir)/$w; fi
    DONE_ARGV=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC_SCOPE[@]}" --worker=0 --command "test -e $(shquote "$w/DONE")")
  fi
}
is_done() {
  done_argv
  "${DONE_ARGV[@]}" >/dev/null 2>&1
}

if ((DRY_RUN)); then
  done_argv
  note "run until $WORKDIR/DONE exists; it does when this succeeds:"
  run "${DONE_ARGV[@]}"
  note "each attempt: the TPU's state"
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GC_SCOPE[@]}" --format='value(state)'
  note "if PREEMPTED or TERMINATED: delete, then create (if absent: create only; if STOPPED: start)"
  "$LAUNCH_DIR/tpu_delete.sh" --dry-run "${tpu_args[@]}" --yes
  "$LAUNCH_DIR/tpu_create.sh" --dry-run "${create_args[@]}"
  run gcloud compute tpus tpu-vm start "$TPU_NAME" "${GC_SCOPE[@]}"
  note "after a (re-)creation and on the first attempt: set up"
  "$LAUNCH_DIR/setup.sh" --dry-run "${setup_args[@]}"
  note "then train (resumes from the latest checkpoint in $WORKDIR)"
  "$LAUNCH_DIR/train.sh" --dry-run "${train_args[@]}"
  note "repeat until DONE: at most $MAX_ATTEMPTS attempts, waiting ${BACKOFF_S}s, doubling, at most ${MAX_BACKOFF_S}s"
  exit 0
fi

need_setup=1
# ensure_ready: bring the TPU to READY (creating, re-creating or starting it); fails on timeout or error.
ensure_ready() {
  local state deadline=$((SECONDS + WAIT_READY_S))
  while true; do
    state=$(tpu_state)
    log "TPU $TPU_NAME is $state"
    case $state in
      READY) return 0 ;;
      PREEMPTED | TERMINATED)
        log "TPU $TPU_NAME was $state: deleting it and creating it again"
        "$LAUNCH_DIR/tpu_delete.sh" "${tpu_args[@]}" --yes || return 1
        "$LAUNCH_DIR/tpu_create.sh" "${create_args[@]}" || return 1
        need_setup=1
        ;;
      NOT_FOUND)
        log "TPU $TPU_NAME does not exist: creating it"
        "$LAUNCH_DIR/tpu_create.sh" "${create_args[@]}" || return 1
        need_setup=1
        ;;
      STOPPED)
        run gcloud compute tpus tpu-vm start "$TPU_NAME" "${GC_SCOPE[@]}" || return 1
        need_setup=1
        ;;
      UNKNOWN) return 1 ;;
      *)
        if ((SECONDS >= deadline)); then
          log "TPU $TPU_NAME still $state after ${WAIT_READY_S}s"
          return 1
        fi
        sleep "$POLL_S"
        ;;
    esac
  done
}

log "running until $WORKDIR/DONE exists: TPU $TPU_NAME ($ACCELERATOR_TYPE$( ((SPOT)) && echo ', spot'; ((PREEMPTIBLE)) && echo ', preemptible'; true)) in $ZONE, at most $MAX_ATTEMPTS attempts"
if is_done; then
  log "$WORKDIR/DONE already exists: training has finished, nothing to do"
  exit 0
fi
for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  log "attempt $attempt/$MAX_ATTEMPTS"
  if ensure_ready; then
    if ((need_setup)); then
      if "$LAUNCH_DIR/setup.sh" "${setup_args[@]}"; then need_setup=0; else log "setup failed"; fi
    fi
    if ((!need_setup)); then
      rc=0
      "$LAUNCH_DIR/train.sh" "${train_args[@]}" || rc=$?
      if is_done; then
        log "finished: $WORKDIR/DONE exists (attempt $attempt)"
        exit 0
      fi
      if ((rc == 0)); then
        log "training exited 0 but $WORKDIR/DONE is absent (does flowers_jax.main write it?)"
      else
        log "training stopped with status $rc (preempted, ssh lost, or an error: see above and launch/logs.sh)"
      fi
    fi
  else
    log "the TPU is not ready"
  fi
  if ((attempt < MAX_ATTEMPTS)); then
    wait_s=$BACKOFF_S
    for ((k = 1; k < attempt && wait_s < MAX_BACKOFF_S; k++)); do wait_s=$((wait_s * 2)); done
    ((wait_s <= MAX_BACKOFF_S)) || wait_s=$MAX_BACKOFF_S
    log "next attempt in ${wait_s}s"
    sleep "$wait_s"
  fi
done
log "gave up after $MAX_ATTEMPTS attempts without $WORKDIR/DONE; run this command again to go on (training resumes from the latest checkpoint)"
exit 1
