# shellcheck shell=bash
# Shared by launch/*.sh (sourced, never run): options from flags or FLOWERS_* environment
# variables, --help, --dry-run, shell quoting, logging, and the gcloud/ssh wrappers.
#
# A script declares its options (opt/flag/list, or the declare_*_opts groups below), calls
# `parse_opts "$@"`, and then runs its commands through `run`/`run_shell`, which print them
# (--dry-run: one copy-pasteable line each, on stdout) or log and execute them.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "launch/: bash >= 4.4 is needed (this is bash $BASH_VERSION); on macOS: brew install bash" >&2
  exit 2
fi

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$LAUNCH_DIR")
SCRIPT=$(basename "$0")
DRY_RUN=0
EXTRA_ARGS=()      # everything after `--`
PASSTHROUGH=()     # unknown options, kept in order, when ALLOW_PASSTHROUGH=1
MAIN_ARGS=()       # the flags for flowers_jax.main (main_args)
ALLOW_PASSTHROUGH=0

# ---------------------------------------------------------------- logging and quoting

log() { printf '[%s %s] %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
  printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
  exit 2
}

# One argument as shell text: bare when it is made of safe characters, else single-quoted.
shquote() {
  local s=$1
  if [[ $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# Arguments as one line of shell text that re-reads as the same arguments.
shjoin() {
  local a out=""
  for a in "$@"; do out+="${out:+ }$(shquote "$a")"; done
  printf '%s' "$out"
}

# Run a command given as arguments; with --dry-run print it instead.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(shjoin "$@")"
  else
    log "+ $(shjoin "$@")"
    "$@"
  fi
}

# Run a line of shell (pipes, cd &&); with --dry-run print it instead. Build it with shjoin.
run_shell() {
  if ((DRY_RUN)); then
    printf '%s\n' "$1"
  else
    log "+ $1"
    bash -c "$1"
  fi
}

# A comment in --dry-run output (a line starting with '#'), a log line otherwise.
note() {
  if ((DRY_RUN)); then printf '# %s\n' "$*"; else log "$*"; fi
}

# ---------------------------------------------------------------- options

_O_FLAG=() _O_VAR=() _O_KIND=() _O_META=() _O_DEFAULT=() _O_HELP=()

_opt_add() { # KIND FLAG VAR META DEFAULT HELP
  local f
  for f in "${_O_FLAG[@]}"; do [[ $f == "--$2" ]] && return 0; done
  _O_KIND+=("$1") _O_FLAG+=("--$2") _O_VAR+=("$3") _O_META+=("$4") _O_DEFAULT+=("$5") _O_HELP+=("$6")
}
# opt NAME VAR META DEFAULT HELP: --NAME META, or env FLOWERS_VAR, else DEFAULT.
opt() { _opt_add value "$@"; }
# flag NAME VAR HELP: --NAME sets VAR=1 (env FLOWERS_VAR=1/true/yes), else 0.
flag() { _opt_add bool "$1" "$2" "" 0 "$3"; }
# list NAME VAR META HELP: --NAME META, repeatable, appends to the array VAR.
list() { _opt_add list "$1" "$2" "$3" "" "$4"; }

_truthy() { # VALUE -> 1 or 0; fails on anything else
  case ${1,,} in
    1 | true | yes | on) echo 1 ;;
    0 | false | no | off | "") echo 0 ;;
    *) return 1 ;;
  esac
}

_opt_index() {
  local i
  for i in "${!_O_FLAG[@]}"; do
    if [[ ${_O_FLAG[i]} == "$1" ]]; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

flag_of() { # VAR -> its --flag
  local i
  for i in "${!_O_VAR[@]}"; do [[ ${_O_VAR[i]} == "$1" ]] && echo "${_O_FLAG[i]}" && return 0; done
  echo "$1"
}

usage() {
  local i left env
  printf '%s\n\n' "${USAGE:-$SCRIPT}"
  echo "Options (a flag beats its FLOWERS_* environment variable, which beats the default):"
  for i in "${!_O_FLAG[@]}"; do
    left="${_O_FLAG[i]}${_O_META[i]:+ ${_O_META[i]}}"
    case ${_O_KIND[i]} in
      bool) env="[env FLOWERS_${_O_VAR[i]}=1]" ;;
      list) env="(repeatable)" ;;
      *) env="[env FLOWERS_${_O_VAR[i]}${_O_DEFAULT[i]:+; default: ${_O_DEFAULT[i]}}]" ;;
    esac
    printf '  %-30s %s %s\n' "$left" "${_O_HELP[i]}" "$env"
  done
  printf '  %-30s %s\n' "--dry-run" "print the commands, one per line, run nothing [env FLOWERS_DRY_RUN=1]"
  printf '  %-30s %s\n' "-h, --help" "this help"
}

parse_opts() {
  local i var env name value has_value
  for i in "${!_O_FLAG[@]}"; do
    var=${_O_VAR[i]} env=FLOWERS_${_O_VAR[i]}
    case ${_O_KIND[i]} in
      list) unset "$var"; declare -g -a "$var" ;;
      bool)
        value=$(_truthy "${!env:-${_O_DEFAULT[i]}}") || die "$env must be 1 or 0 (true/false), got '${!env}'"
        printf -v "$var" '%s' "$value"
        ;;
      *) printf -v "$var" '%s' "${!env:-${_O_DEFAULT[i]}}" ;;
    esac
  done
  DRY_RUN=$(_truthy "${FLOWERS_DRY_RUN:-0}") || die "FLOWERS_DRY_RUN must be 1 or 0, got '$FLOWERS_DRY_RUN'"
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
    esac
    name=$1 value="" has_value=0
    if [[ $name == --*=* ]]; then value=${name#*=} name=${name%%=*} has_value=1; fi
    if ! i=$(_opt_index "$name"); then
      if ((ALLOW_PASSTHROUGH)); then PASSTHROUGH+=("$1"); shift; continue; fi
      if [[ $1 == -* ]]; then die "unknown option $1 (see $SCRIPT --help)"; fi
      die "unexpected argument '$1': options go before --, arguments for the program after it (see $SCRIPT --help)"
    fi
    var=${_O_VAR[i]}
    if [[ ${_O_KIND[i]} == bool ]]; then
      if ((has_value)); then
        value=$(_truthy "$value") || die "$name=VALUE takes 1 or 0 (true/false), got '${1#*=}'"
      else
        value=1
      fi
      printf -v "$var" '%s' "$value"
      shift
      continue
    fi
    if ((!has_value)); then
      (($# >= 2)) || die "$name needs a value (${_O_META[i]})"
      value=$2
      shift
    fi
    shift
    if [[ ${_O_KIND[i]} == list ]]; then
      local -n _ref=$var
      _ref+=("$value")
      unset -n _ref
    else
      printf -v "$var" '%s' "$value"
    fi
  done
  # Scripts this one calls print instead of running, too.
  if ((DRY_RUN)); then export FLOWERS_DRY_RUN=1; fi
}

# require VAR "what it is and how to set it": fail naming the flag and its variable.
require() {
  [[ -n ${!1:-} ]] && return 0
  die "missing $(flag_of "$1") (or env FLOWERS_$1): $2"
}

require_int() { # VAR: a non-negative integer
  [[ ${!1} =~ ^[0-9]+$ ]] || die "$(flag_of "$1") must be a whole number, got '${!1}'"
}

# ---------------------------------------------------------------- shared option groups

declare_tpu_opts() {
  opt tpu-name TPU_NAME NAME flowers-tpu "Cloud TPU VM (or pod slice) name"
  declare_cloud_opts
}

declare_cloud_opts() {
  opt zone ZONE ZONE "${CLOUDSDK_COMPUTE_ZONE:-}" "Google Cloud zone, e.g. us-central2-b (v4), us-west4-a (v5e); also CLOUDSDK_COMPUTE_ZONE"
  opt project PROJECT ID "${CLOUDSDK_CORE_PROJECT:-}" "Google Cloud project (default: gcloud's configured project)"
}

declare_tpu_create_opts() {
  opt accelerator-type ACCELERATOR_TYPE TYPE v4-8 "TPU type: v4-8 (1 host), v4-32 (4 hosts), v5litepod-8, v6e-8, ..."
  opt runtime-version RUNTIME_VERSION VERSION "" "TPU software version (default: from the type: v4 and older tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)"
  flag spot SPOT "spot TPU: cheap, preempted at any time, never restarted (run_until_done.sh re-creates it)"
  flag preemptible PREEMPTIBLE "preemptible TPU (older model: preempted at any time and after 24 h)"
  list create-flag CREATE_FLAGS FLAG "extra flag for 'gcloud compute tpus tpu-vm create', e.g. --create-flag=--reserved"
}

declare_gpu_opts() {
  opt host HOST USER@HOST "" "an existing GPU machine reached with plain ssh/scp"
  opt vm VM NAME "" "a Compute Engine GPU VM (gpu_create.sh) reached with gcloud compute ssh/scp"
  declare_cloud_opts
}

declare_repo_opts() {
  opt remote-dir REMOTE_DIR DIR flowers_jax "where the project lives on the remote machine(s), relative to the home directory"
}

declare_train_opts() {
  opt config CONFIG FILE configs/effnet_lite0.py "run configuration (a path inside the repository)"
  opt workdir WORKDIR DIR "" "run directory: checkpoints, metrics, DONE marker (a pod needs gs://BUCKET/...)"
}

# ---------------------------------------------------------------- gcloud / remote helpers

GC_SCOPE=()
cloud_scope() { # sets GC_SCOPE=(--zone=Z [--project=P])
  require ZONE "the zone the machine lives in, e.g. us-central2-b; or set CLOUDSDK_COMPUTE_ZONE"
  GC_SCOPE=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then GC_SCOPE+=("--project=$PROJECT"); fi
}

# tpu_ssh WORKER CMD: run a line of shell on TPU worker(s) ("all", "0", "1-3").
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC_SCOPE[@]}" "--worker=$1" --command "$2"
}

# tpu_state: the TPU's state (READY, CREATING, PREEMPTED, STOPPED, ...), NOT_FOUND, or UNKNOWN.
tpu_state() {
  local out err errf rc=0
  errf=$(mktemp)
  out=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GC_SCOPE[@]}" --format='value(state)' 2>"$errf") || rc=$?
  err=$(<"$errf")
  rm -f "$errf"
  if ((rc == 0)) && [[ -n $out ]]; then
    printf '%s\n' "${out##*$'\n'}"
  elif [[ $err == *NOT_FOUND* || $err == *"not found"* ]]; then
    echo NOT_FOUND
  else
    log "gcloud describe failed (status $rc): ${err//$'\n'/ | }"
    echo UNKNOWN
  fi
}

tpu_runtime_for() { # ACCELERATOR_TYPE -> runtime version
  case $1 in
    v6e*) echo v2-alpha-tpuv6e ;;
    v5p*) echo v2-alpha-tpuv5 ;;
    v5litepod* | v5e*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# Where the GPU target runs: "vm", "host", or "here" (this machine).
gpu_where() {
  if [[ -n $VM && -n $HOST ]]; then die "give --vm or --host, not both"; fi
  if [[ -n $VM ]]; then echo vm; elif [[ -n $HOST ]]; then echo host; else echo here; fi
}

# gpu_ssh CMD: run a line of shell on the GPU machine (vm / host / here).
gpu_ssh() {
  case $(gpu_where) in
    vm) cloud_scope; run gcloud compute ssh "$VM" "${GC_SCOPE[@]}" --command "$1" ;;
    host) run ssh "$HOST" "$1" ;;
    here) run_shell "$1" ;;
  esac
}

# MAIN_ARGS: the training command line handed to flowers_jax.main (after remote_train.sh's --).
main_args() {
  # shellcheck disable=SC2034  # read by the scripts that source this file
  MAIN_ARGS=(--config "$CONFIG" --workdir "$WORKDIR" "${EXTRA_ARGS[@]}")
}

# A config path as the remote machine sees it: relative to the repository root.
repo_relative() {
  local p=$1
  if [[ $p == "$ROOT"/* ]]; then p=${p#"$ROOT"/}; fi
  if [[ $p == /* ]]; then warn "$p is an absolute path: it must exist on the remote machine too"; fi
  printf '%s' "$p"
}

# REMOTE_DIR as a path the remote shell gets quoted: relative to the home directory ("~/" dropped).
remote_dir() {
  local d=${REMOTE_DIR#\~/}
  [[ -n $d && $d != "~" ]] || die "--remote-dir must name a directory, got '$REMOTE_DIR'"
  printf '%s' "$d"
}

is_gs() { [[ $1 == gs://* ]]; }
