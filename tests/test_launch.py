"""launch/: the scripts' --dry-run commands, the run-until-done loop against a fake gcloud, and the
local multi-process launcher running a real 2-process jax.distributed program on CPU.

No test reaches Google Cloud: dry-run tests put recording stand-ins for gcloud/ssh/scp first on
PATH and check that none was called; the loop test uses a fake gcloud that simulates a spot TPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.glob("*.sh") if p.name != "lib.sh")


def _write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without launch settings (FLOWERS_*, CLOUDSDK_*) that would leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWERS_", "CLOUDSDK_"))}
    env.update(extra)
    return env


def sh(cmdline: str) -> list[str]:
    return shlex.split(cmdline)


@pytest.fixture
def guard(tmp_path):
    """Runs `script args...` (one shell-quoted string) with gcloud/ssh/scp stand-ins first on PATH that
    record any call: dry runs must make none."""
    bin_dir = tmp_path / "guard_bin"
    bin_dir.mkdir()
    calls = tmp_path / "guard_calls.log"
    for name in ("gcloud", "ssh", "scp"):
        _write_exe(bin_dir / name, f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 97\n')

    def run(cmdline: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        script, *args = sh(cmdline)
        full_env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path), **env)
        proc = subprocess.run(
            [str(LAUNCH / script), *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=tmp_path
        )
        if check:
            assert proc.returncode == 0, f"{cmdline} failed ({proc.returncode}):\n{proc.stderr}"
        return proc

    yield run
    assert not calls.exists(), f"a dry run called a real tool:\n{calls.read_text()}"


def _lines(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """The dry-run commands (comment lines dropped), each split as the shell would split it."""
    return [sh(line) for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")]


def _opt(argv: list[str], name: str) -> str:
    """The value of option `name` in argv, given as `name value` or `name=value`."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


# ----------------------------------------------------------------------------------------- every script


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_help_with_dry_run(guard, script):
    out = guard(f"{script} --help").stdout
    assert f"launch/{script}" in out
    assert "--dry-run" in out and "Options" in out


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); .ci/run installs it")
    scripts = sorted(str(p.relative_to(ROOT)) for p in LAUNCH.glob("*.sh"))
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_option_and_stray_argument_fail(guard):
    proc = guard("tpu_create.sh --zone z --acclerator-type v4-8 --dry-run", check=False)
    assert proc.returncode == 2 and "unknown option --acclerator-type" in proc.stderr
    proc = guard("tpu_delete.sh --zone z my-tpu --dry-run", check=False)
    assert proc.returncode == 2 and "unexpected argument 'my-tpu'" in proc.stderr


@pytest.mark.parametrize(
    ("cmdline", "named"),
    [
        ("tpu_create.sh", "--zone (or env FLOWERS_ZONE)"),
        ("train.sh --target tpu --zone z", "--workdir (or env FLOWERS_WORKDIR)"),
        ("train.sh --target local", "--workdir (or env FLOWERS_WORKDIR)"),
        ("run_until_done.sh --zone z", "--workdir (or env FLOWERS_WORKDIR)"),
        ("gpu_create.sh --zone z", "--vm (or env FLOWERS_VM)"),
        ("stage_data.sh --dest gs://b/d", "--src (or env FLOWERS_SRC)"),
        ("fetch.sh", "--workdir (or env FLOWERS_WORKDIR)"),
        ("local.sh", "no command: give it after --"),
    ],
)
def test_missing_required_setting_fails_naming_it(guard, cmdline, named):
    proc = guard(f"{cmdline} --dry-run", check=False)
    assert proc.returncode == 2, proc.stdout
    assert named in proc.stderr
    assert proc.stdout == ""  # nothing half-printed


def test_settings_come_from_env_and_flags_win(guard):
    env = {"FLOWERS_ZONE": "europe-west4-a", "FLOWERS_TPU_NAME": "from-env", "FLOWERS_SPOT": "1"}
    (cmd,) = _lines(guard("tpu_create.sh --dry-run", **env))
    assert cmd[:6] == sh("gcloud compute tpus tpu-vm create from-env")
    assert "--zone=europe-west4-a" in cmd and "--spot" in cmd
    (cmd,) = _lines(guard("tpu_create.sh --tpu-name from-flag --zone=us-central2-b --spot=0 --dry-run", **env))
    assert cmd[5] == "from-flag" and "--zone=us-central2-b" in cmd and "--spot" not in cmd
    (cmd,) = _lines(guard("tpu_create.sh --dry-run", CLOUDSDK_COMPUTE_ZONE="us-east1-d", CLOUDSDK_CORE_PROJECT="p1"))
    assert "--zone=us-east1-d" in cmd and "--project=p1" in cmd
    proc = guard("tpu_create.sh --zone z --dry-run", check=False, FLOWERS_SPOT="maybe")
    assert proc.returncode == 2 and "FLOWERS_SPOT must be 1 or 0" in proc.stderr


# ----------------------------------------------------------------------------------------- TPU lifecycle


def test_tpu_create_spot_preemptible_and_runtime(guard):
    (cmd,) = _lines(guard("tpu_create.sh --zone us-central2-b --accelerator-type v4-32 --spot --dry-run"))
    assert cmd == sh(
        "gcloud compute tpus tpu-vm create flowers-tpu --zone=us-central2-b --accelerator-type=v4-32"
        " --version=tpu-ubuntu2204-base --spot"
    )
    (cmd,) = _lines(
        guard(
            "tpu_create.sh --zone z --accelerator-type v5litepod-8 --preemptible --project my-proj"
            " --create-flag=--reserved --dry-run"
        )
    )
    assert "--version=v2-alpha-tpuv5-lite" in cmd and "--preemptible" in cmd and "--spot" not in cmd
    assert "--project=my-proj" in cmd and cmd[-1] == "--reserved"
    (cmd,) = _lines(guard("tpu_create.sh --zone z --accelerator-type v6e-8 --dry-run"))
    assert "--version=v2-alpha-tpuv6e" in cmd and "--spot" not in cmd and "--preemptible" not in cmd
    proc = guard("tpu_create.sh --zone z --spot --preemptible --dry-run", check=False)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    proc = guard("tpu_create.sh --zone z --accelerator-type v9-8 --dry-run", check=False)
    assert proc.returncode == 2 and "--runtime-version" in proc.stderr


def test_tpu_delete(guard):
    (cmd,) = _lines(guard("tpu_delete.sh --tpu-name t --zone z --yes --dry-run"))
    assert cmd == sh("gcloud compute tpus tpu-vm delete t --zone=z --quiet")


def test_setup_copies_checkout_and_installs_tpu_extra_on_all_workers(guard, tmp_path):
    tar, scp, ssh = _lines(guard("setup.sh --target tpu --tpu-name t --zone z --dry-run"))
    assert "tar" in tar and str(tmp_path / "flowers_jax-src.tgz") in tar  # the checkout, packed
    assert scp[:5] == sh("gcloud compute tpus tpu-vm scp") and "--worker=all" in scp
    assert ssh[:6] == sh("gcloud compute tpus tpu-vm ssh t") and "--worker=all" in ssh
    remote = _opt(ssh, "--command")
    assert "tar -xzf flowers_jax-src.tgz -C flowers_jax" in remote
    assert remote.endswith("cd flowers_jax && bash launch/remote_setup.sh --extra tpu")
    # From git instead, into a directory with a space.
    cmdline = "setup.sh --target tpu --zone z --remote-dir 'my flowers' --git-url https://x.org/f.git --git-ref v1"
    (ssh,) = _lines(guard(f"{cmdline} --dry-run"))
    remote = _opt(ssh, "--command")
    assert "git clone --quiet https://x.org/f.git 'my flowers'" in remote
    assert "fetch --quiet origin v1" in remote and "cd 'my flowers' && bash launch/remote_setup.sh" in remote


def test_setup_gpu_host_vm_and_here(guard):
    _, scp, ssh = _lines(guard("setup.sh --target gpu --host me@box --dry-run"))
    assert scp[0] == "scp" and scp[-1] == "me@box:flowers_jax-src.tgz"
    assert ssh[:2] == ["ssh", "me@box"] and ssh[2].endswith("launch/remote_setup.sh --extra cuda12")
    _, scp, ssh = _lines(guard("setup.sh --target gpu --vm g --zone z --extra cuda13 --dry-run"))
    assert scp[:3] == sh("gcloud compute scp") and ssh[:4] == sh("gcloud compute ssh g")
    assert _opt(ssh, "--command").endswith("--extra cuda13")
    out = guard("setup.sh --target gpu --dry-run").stdout
    assert f"cd {ROOT} && bash launch/remote_setup.sh --extra cuda12" in out.splitlines()


def test_train_tpu_runs_on_all_workers_with_quoted_paths(guard):
    proc = guard(
        f"train.sh --target tpu --tpu-name pod --zone us-central2-b --workdir 'gs://my bucket/run 1'"
        f' --config {ROOT}/configs/effnet_b0.py --dry-run -- "--config.data.data_dir=/data/it\'s here" --config.seed=2'
    )
    (cmd,) = _lines(proc)
    assert cmd[:6] == sh("gcloud compute tpus tpu-vm ssh pod")
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd
    remote = sh(_opt(cmd, "--command"))  # what the remote shell runs, after its own parsing
    assert remote[:5] == sh("cd flowers_jax && bash launch/remote_train.sh")
    assert remote[remote.index("--") + 1 :] == [
        "--config", "configs/effnet_b0.py",  # made relative to the repository: the remote has its own copy
        "--workdir", "gs://my bucket/run 1",
        "--config.data.data_dir=/data/it's here", "--config.seed=2",
    ]  # fmt: skip
    assert "WARNING" not in proc.stderr
    proc = guard("train.sh --target tpu --zone z --workdir workdirs/b0 --replace --dry-run")
    assert "not on GCS" in proc.stderr
    assert "launch/remote_train.sh --replace --" in _opt(_lines(proc)[0], "--command")
    proc = guard("train.sh --target tpu --zone z --workdir w -n 2 --dry-run", check=False)
    assert proc.returncode == 2 and "unknown option -n for --target tpu" in proc.stderr


def test_train_gpu_host_vm_and_here(guard):
    (cmd,) = _lines(guard("train.sh --target gpu --host me@box --workdir 'w x' --detach --dry-run"))
    assert cmd[:2] == ["ssh", "me@box"]
    remote = sh(cmd[2])
    assert remote[:6] == sh("cd flowers_jax && bash launch/remote_train.sh --detach")
    assert remote[remote.index("--workdir") + 1] == "w x"
    (cmd,) = _lines(guard("train.sh --target gpu --vm g --zone z --workdir gs://b/r --dry-run"))
    assert cmd[:4] == sh("gcloud compute ssh g") and "--zone=z" in cmd
    (cmd,) = _lines(guard("train.sh --target gpu --workdir w --dry-run"))
    assert cmd[:5] == ["cd", str(ROOT), "&&", "bash", "launch/remote_train.sh"]
    proc = guard("train.sh --target gpu --host h --vm v --workdir w --dry-run", check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_train_local_dry_run_starts_n_processes(guard, tmp_path):
    workdir = shlex.quote(str(tmp_path / "my run"))
    cmdline = f"train.sh --target local -n 3 --port 4567 --python py --workdir {workdir} --config configs/smoke.py"
    lines = guard(f"{cmdline} --dry-run -- --config.seed=1").stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "wait"
    for i, line in enumerate(lines[:3]):
        assert sh(line) == sh(
            f"env JAX_PLATFORMS=cpu py -m flowers_jax.main --config configs/smoke.py --workdir {workdir}"
            f" --config.seed=1 --coordinator_address 127.0.0.1:4567 --num_processes 3 --process_id {i} &"
        )
    out = guard("local.sh -n 1 --dry-run -- python x.py").stdout
    assert out.splitlines() == ["env JAX_PLATFORMS=cpu python x.py &", "wait"]  # one process: no distributed flags


def test_stage_data_to_bucket_and_to_workers(guard, tmp_path):
    src = tmp_path / "kaggle data"
    (src / "tfrecords-jpeg-224x224" / "train").mkdir(parents=True)
    (src / "tfrecords-jpeg-512x512").mkdir()
    q = shlex.quote(str(src))
    (cmd,) = _lines(guard(f"stage_data.sh --src {q} --dest gs://b/data/ --sizes 224 --dry-run"))
    assert cmd == ["gcloud", "storage", "rsync", "--recursive", f"{src}/tfrecords-jpeg-224x224",
                   "gs://b/data/tfrecords-jpeg-224x224"]  # fmt: skip
    (cmd,) = _lines(guard("stage_data.sh --src gs://b/data --dest /mnt/data --zone z --sizes 224,512 --dry-run"))
    assert cmd[:5] == sh("gcloud compute tpus tpu-vm ssh") and "--worker=all" in cmd
    assert _opt(cmd, "--command") == (
        "mkdir -p /mnt/data && gcloud storage rsync --recursive gs://b/data/tfrecords-jpeg-224x224 "
        "/mnt/data/tfrecords-jpeg-224x224 && gcloud storage rsync --recursive gs://b/data/tfrecords-jpeg-512x512 "
        "/mnt/data/tfrecords-jpeg-512x512"
    )
    mkdir, scp = _lines(guard(f"stage_data.sh --src {q} --dest /mnt/data --zone z --dry-run"))
    assert "--worker=all" in mkdir and "--worker=all" in scp and "--recurse" in scp
    proc = guard(f"stage_data.sh --src {q} --dest gs://b/d --sizes 331 --dry-run", check=False)
    assert proc.returncode == 2 and "tfrecords-jpeg-331x331 does not exist" in proc.stderr


def test_logs_and_fetch(guard, tmp_path):
    (cmd,) = _lines(guard("logs.sh --tpu-name t --zone z --dry-run"))
    assert "--worker=0" in cmd and _opt(cmd, "--command") == "tail -n 100 -F flowers_jax_logs/train.log"
    (cmd,) = _lines(guard("logs.sh --zone z --worker all --no-follow --dry-run"))
    assert "--worker=all" in cmd and "-F" not in _opt(cmd, "--command")
    dest = str(tmp_path / "runs here")
    mkdir, rsync = _lines(guard(f"fetch.sh --workdir gs://b/flowers/b0/ --dest {shlex.quote(dest)} --dry-run"))
    assert mkdir == ["mkdir", "-p", f"{dest}/b0"]
    assert rsync == ["gcloud", "storage", "rsync", "--recursive", "gs://b/flowers/b0", f"{dest}/b0"]
    _, scp = _lines(guard(f"fetch.sh --workdir workdirs/b0 --zone z --dest {shlex.quote(dest)} --dry-run"))
    assert scp[4:7] == ["scp", "--recurse", "flowers-tpu:flowers_jax/workdirs/b0"] and "--worker=0" in scp


def test_gpu_create_and_delete(guard):
    (cmd,) = _lines(guard("gpu_create.sh --vm g --zone z --spot --dry-run"))
    assert cmd[:5] == sh("gcloud compute instances create g")
    assert "--accelerator=type=nvidia-l4,count=1" in cmd and "--metadata=install-nvidia-driver=True" in cmd
    assert "--provisioning-model=SPOT" in cmd
    (cmd,) = _lines(guard("gpu_delete.sh --vm g --zone z --dry-run"))
    assert cmd == sh("gcloud compute instances delete g --zone=z")


def test_run_until_done_dry_run_shows_the_whole_plan(guard):
    cmdline = "run_until_done.sh --tpu-name t --zone z --spot --workdir 'gs://b/r 1' --config configs/effnet_b0.py"
    cmds = _lines(guard(f"{cmdline} --dry-run -- --config.seed=3"))
    assert cmds[0] == ["gcloud", "storage", "ls", "gs://b/r 1/DONE"]
    verbs = [c[4] if c[:4] == sh("gcloud compute tpus tpu-vm") else c[0] for c in cmds]
    assert verbs == ["gcloud", "describe", "delete", "create", "start", "cd", "scp", "ssh", "ssh"]
    assert "--spot" in cmds[3]
    remote = sh(_opt(cmds[-1], "--command"))
    assert "--replace" in remote
    assert remote[-5:] == ["--config", "configs/effnet_b0.py", "--workdir", "gs://b/r 1", "--config.seed=3"]


# ----------------------------------------------------------------------------------------- the resume loop

FAKE_GCLOUD = r'''#!{python}
"""Fake gcloud: a TPU whose state lives in a file, a GCS bucket in a folder, scripted training runs."""
import json, os, pathlib, shlex, sys

state = pathlib.Path(os.environ["FAKE_STATE"])
args = sys.argv[1:]
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
tpu = state / "tpu_state"


def opt(name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]


def bump(name):
    p = state / name
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


if args[:2] == ["storage", "ls"]:
    path = state / "gcs" / args[2].removeprefix("gs://")
    if path.exists():
        print(args[2])
        sys.exit(0)
    print("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.", file=sys.stderr)
    sys.exit(1)
if args[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit("fake gcloud: unexpected command " + " ".join(args))
verb = args[3]
if verb == "describe":
    if not tpu.exists():
        print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource not found", file=sys.stderr)
        sys.exit(1)
    print(tpu.read_text())
elif verb in ("create", "start"):
    tpu.write_text("READY")
elif verb == "delete":
    tpu.unlink()
elif verb == "ssh":
    remote = shlex.split(opt("--command"))
    if "launch/remote_train.sh" in remote:
        if tpu.read_text() != "READY":
            sys.exit(255)
        plan = os.environ["FAKE_TRAIN_PLAN"].split(",")
        action = plan[min(bump("trainings"), len(plan)) - 1]
        if action == "preempt":  # the TPU goes away mid-run: ssh loses the connection
            tpu.write_text("PREEMPTED")
            print("Connection to 10.0.0.2 closed by remote host.", file=sys.stderr)
            sys.exit(255)
        if action == "done":  # training finishes and writes WORKDIR/DONE
            workdir = remote[remote.index("--workdir") + 1]
            done = state / "gcs" / workdir.removeprefix("gs://") / "DONE"
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("")
            sys.exit(0)
        sys.exit(1)
'''


@pytest.fixture
def fake_cloud(tmp_path):
    state = tmp_path / "state"
    (state / "gcs").mkdir(parents=True)
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", FAKE_GCLOUD.replace("{python}", sys.executable))

    def run(*args: str, plan: str, tpu_state: str | None = "READY") -> tuple[subprocess.CompletedProcess, list]:
        if tpu_state is not None:
            (state / "tpu_state").write_text(tpu_state)
        env = _clean_env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            TMPDIR=str(tmp_path),
            FAKE_STATE=str(state),
            FAKE_TRAIN_PLAN=plan,
        )
        cmd = [str(LAUNCH / "run_until_done.sh"), *sh("--tpu-name t --zone z --spot --backoff-s 0 --poll-s 0"), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        calls = [json.loads(x) for x in (state / "calls.jsonl").read_text().splitlines()]
        return proc, calls

    run.state = state
    return run


def _labels(calls: list[list[str]]) -> list[str]:
    """gcloud calls as short labels: 'describe', 'create', 'ssh:setup', 'ssh:train', 'ls', ..."""
    out = []
    for c in calls:
        if c[:2] == ["storage", "ls"]:
            out.append("ls")
        elif c[3] == "ssh":
            cmd = c[c.index("--command") + 1]
            out.append("ssh:train" if "remote_train.sh" in cmd else "ssh:setup" if "remote_setup.sh" in cmd else "ssh")
        else:
            out.append(c[3])
    return out


def test_run_until_done_recreates_preempted_tpu_and_resumes_until_done(fake_cloud):
    proc, calls = fake_cloud("--workdir", "gs://b/my run", "--", "--config.seed=1", plan="preempt,done")
    assert proc.returncode == 0, proc.stderr
    assert _labels(calls) == [
        "ls",                                             # not finished yet
        "describe", "scp", "ssh:setup", "ssh:train",      # attempt 1: READY, set up, train ... preempted
        "ls",
        "describe", "delete", "describe", "create",       # attempt 2: PREEMPTED -> delete, re-create (spot)
        "describe", "scp", "ssh:setup", "ssh:train",      # READY, set up the new VM, train (resumes) -> DONE
        "ls",                                             # DONE exists: stop
    ]  # fmt: skip
    create = next(c for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "create"])
    assert "--spot" in create and "--zone=z" in create
    trains = [c for c in calls if _labels([c]) == ["ssh:train"]]
    assert trains[0] == trains[1] and "--worker=all" in trains[0]  # the same launch command, re-run
    remote = shlex.split(trains[0][trains[0].index("--command") + 1])
    assert "--replace" in remote and remote[-3:] == ["--workdir", "gs://b/my run", "--config.seed=1"]
    assert "was PREEMPTED: deleting it and creating it again" in proc.stderr
    assert "finished: gs://b/my run/DONE exists (attempt 2)" in proc.stderr


def test_run_until_done_creates_a_missing_tpu(fake_cloud):
    proc, calls = fake_cloud("--workdir", "gs://b/r", plan="done", tpu_state=None)
    assert proc.returncode == 0, proc.stderr
    assert _labels(calls) == ["ls", "describe", "describe", "create", "describe", "scp", "ssh:setup", "ssh:train", "ls"]


def test_run_until_done_does_nothing_when_done(fake_cloud):
    done = fake_cloud.state / "gcs" / "b" / "r" / "DONE"
    done.parent.mkdir(parents=True)
    done.write_text("")
    proc, calls = fake_cloud("--workdir", "gs://b/r", plan="fail")
    assert proc.returncode == 0 and _labels(calls) == ["ls"]
    assert "already exists" in proc.stderr


def test_run_until_done_gives_up_after_max_attempts(fake_cloud):
    proc, calls = fake_cloud("--workdir", "gs://b/r", "--max-attempts", "3", plan="fail")
    assert proc.returncode == 1
    labels = _labels(calls)
    assert labels.count("ssh:train") == 3 and labels.count("ssh:setup") == 1  # set up once, not per attempt
    assert "training stopped with status 1" in proc.stderr and "gave up after 3 attempts" in proc.stderr


# ----------------------------------------------------------------------------------------- on the machine


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python prints its arguments, then exits with $FAKE_EXIT."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _write_exe(venv / "bin" / "python", '#!/bin/sh\necho "training: $*"\nexit "${FAKE_EXIT:-0}"\n')
    return venv


def test_remote_train_logs_and_returns_the_training_status(tmp_path, fake_venv):
    logs = tmp_path / "log dir"
    args = [str(LAUNCH / "remote_train.sh"), "--venv", str(fake_venv), "--log-dir", str(logs), "--"]
    args += sh("--workdir 'gs://b/r 1'")
    proc = subprocess.run(args, capture_output=True, text=True, env=_clean_env(FAKE_EXIT="3"), timeout=60)
    assert proc.returncode == 3
    assert "training: -m flowers_jax.main --workdir gs://b/r 1" in proc.stdout
    log = (logs / "train.log").read_text()
    assert "start: env PYTHONUNBUFFERED=1" in log and "training: -m flowers_jax.main" in log
    assert log.rstrip().endswith("exit status 3")
    assert not (logs / "train.pid").exists()
    proc = subprocess.run(args, capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert proc.returncode == 0
    proc = subprocess.run(
        [args[0], "--venv", str(tmp_path / "nope"), *args[3:]], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "run launch/setup.sh" in proc.stderr


def test_remote_train_refuses_or_replaces_a_running_training(tmp_path, fake_venv):
    logs = tmp_path / "logs"
    logs.mkdir()
    earlier = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "flowers_jax.main"])
    try:
        (logs / "train.pid").write_text(str(earlier.pid))
        args = [str(LAUNCH / "remote_train.sh"), "--venv", str(fake_venv), "--log-dir", str(logs), "--", "--x"]
        proc = subprocess.run(args, capture_output=True, text=True, env=_clean_env(), timeout=60)
        assert proc.returncode == 2 and f"already running here (pid {earlier.pid}" in proc.stderr
        assert earlier.poll() is None
        start = time.monotonic()
        proc = subprocess.run(
            [args[0], "--replace", *args[1:]], capture_output=True, text=True, env=_clean_env(), timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - start < 20  # SIGTERM was enough: no 30 s wait for SIGKILL
        assert earlier.wait(timeout=10) == -signal.SIGTERM
    finally:
        earlier.kill()
        earlier.wait()


def test_remote_setup_dry_run_installs_the_extra(guard):
    venv = pathlib.Path(sys.prefix)  # this test's own venv: Python >= 3.11, so it is reused
    out = guard(f"remote_setup.sh --extra cuda12 --venv {shlex.quote(str(venv))} --force --dry-run").stdout
    assert f"{venv}/bin/python -m pip install --quiet -e '.[cuda12]'" in out.splitlines()
    proc = guard("remote_setup.sh --extra rocm --dry-run", check=False)
    assert proc.returncode == 2 and "--extra must be tpu, cuda12, cuda13 or none" in proc.stderr


# ----------------------------------------------------------------------------------------- local multi-process

ALLSUM = textwrap.dedent(
    """
    import argparse, pathlib
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    p = argparse.ArgumentParser()
    for name in ("--coordinator_address", "--workdir", "--config"):
        p.add_argument(name)
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    a, _ = p.parse_known_args()
    jax.distributed.initialize(a.coordinator_address, num_processes=a.num_processes, process_id=a.process_id)
    me = jax.process_index()
    gathered = multihost_utils.process_allgather(np.array([me + 1.0]))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    local = np.full((jax.local_device_count(),), me + 1.0, np.float32)
    x = multihost_utils.host_local_array_to_global_array(local, mesh, P("data"))
    total = jax.jit(lambda v: v.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    print(f"process {me}/{jax.process_count()} devices {jax.device_count()} allgather {gathered.tolist()} "
          f"jit_sum {float(total)}", flush=True)
    pathlib.Path(a.workdir, f"ok_{me}").write_text("")
    """
)


def test_two_local_processes_run_jax_distributed_through_train_sh(tmp_path):
    """train.sh --target local -> local.sh -> 2 JAX processes on CPU (gloo) that all-gather and psum."""
    program = tmp_path / "allsum.py"
    program.write_text(ALLSUM)
    # Stands in for the venv's python: runs the program with the flags `-m flowers_jax.main` would get.
    shim = _write_exe(tmp_path / "python", f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{program}" "$@"\n')
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    cmd = [str(LAUNCH / "train.sh"), *sh("--target local -n 2 --devices-per-process 2")]
    cmd += ["--python", str(shim), "--workdir", str(workdir), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i in (0, 1):
        # 2 processes x 2 devices; all-gather [1, 2]; sum over 4 devices 1 + 1 + 2 + 2.
        assert f"[p{i}] process {i}/2 devices 4 allgather [[1.0], [2.0]] jit_sum 6.0" in proc.stdout
        assert (workdir / f"ok_{i}").exists()
        assert "jit_sum 6.0" in (tmp_path / "logs" / f"process_{i}.log").read_text()
    assert "all 2 process(es) finished OK" in proc.stderr


def _running(pid: int) -> bool:
    """Whether pid is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_local_launcher_stops_the_others_when_one_fails(tmp_path):
    program = tmp_path / "fail.py"
    program.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, time
            i = int(sys.argv[sys.argv.index("--process_id") + 1])
            open(f"pid{i}", "w").write(str(os.getpid()))
            if i == 1:
                time.sleep(0.5)
                sys.exit(3)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn one: needs SIGKILL
            time.sleep(120)
            """
        )
    )
    start = time.monotonic()
    proc = subprocess.run(
        [str(LAUNCH / "local.sh"), "-n", "2", "--grace-s", "1", "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 3
    assert time.monotonic() - start < 30
    assert "p1 exited with status 3: stopping the other processes" in proc.stderr
    pid0 = int((tmp_path / "pid0").read_text())
    for _ in range(50):  # killed; init reaps the orphan shortly after
        if not _running(pid0):
            break
        time.sleep(0.1)
    else:
        os.kill(pid0, signal.SIGKILL)
        pytest.fail("process 0 survived its sibling's failure")
