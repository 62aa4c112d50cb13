#!/usr/bin/env bash
# On the machine that trains (each TPU worker, the GPU box): run flowers_jax.main with a log file.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/remote_train.sh [options] -- MAIN_ARGS...

Runs ON the training machine (launch/train.sh calls it on every TPU worker with --worker=all, or
on the GPU machine): python -m flowers_jax.main MAIN_ARGS from the project's copy, with the venv
of remote_setup.sh, output appended to LOG_DIR/train.log and the process id in LOG_DIR/train.pid.
Exits with the training's status (0 = finished). Resuming is the training's job: the same
MAIN_ARGS (same --workdir) continue from the workdir's latest checkpoint.

Examples:
  bash launch/remote_train.sh -- --config configs/effnet_b0.py --workdir gs://my-bucket/flowers/b0
  bash launch/remote_train.sh --detach -- --config configs/effnet_b0.py --workdir gs://my-bucket/flowers/b0"

opt venv VENV DIR "$HOME/flowers_jax_venv" "the venv made by remote_setup.sh"
opt log-dir LOG_DIR DIR "$HOME/flowers_jax_logs" "where train.log and train.pid go"
flag replace REPLACE "stop a training this script started earlier (train.pid) instead of refusing to start"
flag detach DETACH "start in the background (survives the ssh session) and return; follow with launch/logs.sh"
list env ENVS KEY=VALUE "extra environment for the training process"
parse_opts "$@"

((${#EXTRA_ARGS[@]})) || die "no training arguments: give them after --, e.g. -- --config configs/effnet_b0.py --workdir gs://B/run"
cd "$ROOT"
py=$VENV/bin/python
if ((!DRY_RUN)) && [[ ! -x $py ]]; then
  die "no venv at $VENV: run launch/setup.sh (which runs launch/remote_setup.sh here) first"
fi
for kv in "${ENVS[@]}"; do [[ $kv == ?*=* ]] || die "--env takes KEY=VALUE, got '$kv'"; done
log_file=$LOG_DIR/train.log
pid_file=$LOG_DIR/train.pid
argv=(env PYTHONUNBUFFERED=1 "${ENVS[@]}" "$py" -m flowers_jax.main "${EXTRA_ARGS[@]}")

# A training started by an earlier launch, still alive? (Checked by its command line, not just the pid.)
running_pid() {
  local pid
  [[ -f $pid_file ]] || return 1
  pid=$(cat "$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q flowers_jax.main || return 1
  echo "$pid"
}

alive() { # PID: running (a zombie, dead but not yet reaped, is not)
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0 # no /proc: trust kill -0
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

stop_pid() {
  local pid=$1 t
  log "stopping the earlier training (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((t = 0; t < 300; t++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

if ((DRY_RUN)); then
  note "on $(hostname), in $ROOT; output appended to $log_file"
  if ((DETACH)); then run setsid "${argv[@]}"; else run "${argv[@]}"; fi
  exit 0
fi

mkdir -p "$LOG_DIR"
if old=$(running_pid); then
  ((REPLACE)) || die "a training is already running here (pid $old, log $log_file): follow it with launch/logs.sh, or pass --replace to stop it and start again"
  stop_pid "$old"
fi
printf '=== %s %s start: %s\n' "$(date -u +%FT%TZ)" "$(hostname)" "$(shjoin "${argv[@]}")" >>"$log_file"

if ((DETACH)); then
  setsid "${argv[@]}" >>"$log_file" 2>&1 </dev/null &
  echo "$!" >"$pid_file"
  log "started in the background on $(hostname): pid $!, log $log_file"
  exit 0
fi

"${argv[@]}" > >(tee -a "$log_file") 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"
# The ssh session going away (HUP) or a Ctrl-C stops the training: no orphan holds the TPU.
trap 'kill -TERM "$pid" 2>/dev/null || true' HUP INT TERM
rc=0
while true; do
  wait "$pid" && rc=0 || rc=$?
  kill -0 "$pid" 2>/dev/null || break # wait returned early for a trapped signal: keep waiting
done
rm -f "$pid_file"
printf '=== %s %s exit status %s\n' "$(date -u +%FT%TZ)" "$(hostname)" "$rc" >>"$log_file"
exit "$rc"
