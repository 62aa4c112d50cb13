#!/usr/bin/env bash
# Run N processes of one command on this machine as one multi-host JAX job (CPU collectives).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

USAGE="launch/local.sh [options] -- COMMAND [ARGS...]

Starts N copies of COMMAND on localhost as the N hosts of one JAX job: process i gets
  --coordinator_address 127.0.0.1:PORT --num_processes N --process_id i
appended (for N > 1; N = 1 runs COMMAND as it is), and its own environment
(JAX_PLATFORMS=cpu unless --env says otherwise). Output lines are prefixed [p0], [p1], ...
The first process to fail stops the others (SIGTERM, then SIGKILL) and its status is returned.
This is what 'launch/train.sh --target local' runs; a pod runs the same program once per host.

Examples:
  launch/local.sh -n 2 -- .venv/bin/python -m flowers_jax.main --config configs/smoke.py --workdir /tmp/w
  launch/local.sh -n 2 --devices-per-process 4 -- python my_program.py   # 2 hosts x 4 CPU devices"

opt num-processes NUM_PROCESSES N 2 "number of processes (simulated hosts)"
opt port PORT PORT "" "coordinator port on 127.0.0.1 (default: a free one)"
opt devices-per-process DEVICES_PER_PROCESS K "" "simulate K CPU devices per process (XLA_FLAGS=--xla_force_host_platform_device_count=K)"
list env ENVS KEY=VALUE "environment for every process; {i} in VALUE becomes the process index, e.g. CUDA_VISIBLE_DEVICES={i}"
opt log-dir LOG_DIR DIR "" "also write process i's output to DIR/process_i.log"
opt grace-s GRACE_S SECONDS 10 "after a failure, how long the others get between SIGTERM and SIGKILL"
args=()
while (($#)) && [[ $1 != -- ]]; do # -n N is short for --num-processes N
  if [[ $1 == -n ]]; then args+=(--num-processes); else args+=("$1"); fi
  shift
done
parse_opts "${args[@]}" "$@"

((${#EXTRA_ARGS[@]})) || die "no command: give it after --, e.g. launch/local.sh -n 2 -- python my_program.py"
[[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--num-processes must be a positive whole number, got '$NUM_PROCESSES'"
require_int GRACE_S

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000))
}

# process_argv I: sets ARGV to process I's full command (env assignments, command, JAX flags).
process_argv() {
  local i=$1 kv
  local -a penv=("JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}")
  if [[ -n $DEVICES_PER_PROCESS ]]; then
    penv+=("XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
  fi
  for kv in "${ENVS[@]}"; do
    [[ $kv == ?*=* ]] || die "--env takes KEY=VALUE, got '$kv'"
    penv+=("${kv//\{i\}/$i}")
  done
  ARGV=(env "${penv[@]}" "${EXTRA_ARGS[@]}")
  if ((NUM_PROCESSES > 1)); then
    ARGV+=(--coordinator_address "127.0.0.1:$PORT" --num_processes "$NUM_PROCESSES" --process_id "$i")
  fi
}

if ((NUM_PROCESSES > 1)) && [[ -z $PORT ]]; then PORT=$(free_port); fi
if [[ -n $PORT ]]; then require_int PORT; fi

if ((DRY_RUN)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    process_argv "$i"
    printf '%s &\n' "$(shjoin "${ARGV[@]}")"
  done
  echo wait
  exit 0
fi

if [[ -n $LOG_DIR ]]; then mkdir -p "$LOG_DIR"; fi
pids=()

stop_all() { # SIGTERM every process group still alive, then SIGKILL after GRACE_S
  local pid t alive
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for ((t = 0; t < GRACE_S * 10; t++)); do
    alive=0
    for pid in "${pids[@]}"; do if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap 'log "interrupted: stopping all processes"; stop_all; exit 130' INT
trap 'log "terminated: stopping all processes"; stop_all; exit 143' TERM

# Job control gives each process (and its children, and its log prefixer) its own process group,
# so a failure can stop a whole process tree without touching anything else.
set -m
log "starting $NUM_PROCESSES process(es)${PORT:+, coordinator 127.0.0.1:$PORT}"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  process_argv "$i"
  log "p$i: $(shjoin "${ARGV[@]}")"
  logfile=${LOG_DIR:+$LOG_DIR/process_$i.log}
  (
    set -o pipefail
    "${ARGV[@]}" </dev/null 2>&1 |
      awk -v p="[p$i] " -v f="$logfile" '{ print p $0; fflush(); if (f != "") { print $0 > f; fflush(f) } }'
  ) &
  pids+=($!)
done
set +m

# Wait for all; the first failure stops the rest. (Polling: `wait -n -p` needs bash 5.1.)
declare -A finished=()
while ((${#finished[@]} < NUM_PROCESSES)); do
  for i in "${!pids[@]}"; do
    [[ -n ${finished[$i]:-} ]] && continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    rc=0
    wait "${pids[i]}" || rc=$?
    finished[$i]=$rc
    if ((rc != 0)); then
      log "p$i exited with status $rc: stopping the other processes"
      stop_all
      wait || true
      exit "$rc"
    fi
    log "p$i finished"
  done
  sleep 0.2
done
log "all $NUM_PROCESSES process(es) finished OK"
