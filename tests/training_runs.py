"""Runs `python -m flowers_jax.main` in a subprocess, as a user would, for the training tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny but real run: MobileNetV2-0.35 (random init: compiles fastest) at 32x32 on 4 synthetic
# classes, two stages (head only with frozen BatchNorm for 1 epoch, then everything for 2), 8 steps
# per epoch.
TINY = [
    "--config.model=mobilenet_v2_035",
    "--config.pretrained=",
    "--config.num_classes=4",
    "--config.data.image_size=32",
    "--config.batch_size=8",
    "--config.synthetic_data.train_per_class=16",
    "--config.synthetic_data.val_per_class=5",
    "--config.synthetic_data.test_examples=7",
    "--config.stage_order=head,all",
    "--config.stages.head.epochs=1",
    "--config.stages.all.epochs=2",
    "--config.checkpoint.every_steps=3",
    "--config.log_every_steps=1",
]


def main_command(workdir: os.PathLike, *extra: str, config: str = "configs/smoke.py") -> list[str]:
    return [sys.executable, "-m", "flowers_jax.main", f"--config={ROOT / config}", f"--workdir={workdir}", *extra]


def env(devices: int = 1) -> dict[str, str]:
    out = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    flags = [f for f in out.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    out["XLA_FLAGS"] = " ".join(flags)
    return out


def run(workdir: os.PathLike, *extra: str, devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs main to completion; raises with its output if it fails."""
    proc = subprocess.run(
        main_command(workdir, *extra), cwd=ROOT, env=env(devices), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        first = proc.stderr.find("Traceback")
        raise AssertionError(
            f"main failed ({proc.returncode}):\n{proc.stdout[-3000:]}\nfirst traceback:\n"
            f"{proc.stderr[first : first + 6000] if first >= 0 else ''}\n...\n{proc.stderr[-3000:]}"
        )
    return proc


def read_meta(workdir: str, which: str = "latest") -> tuple[int, dict] | None:
    """(step, meta) of a workdir's checkpoint (a read-only look-up), or None when it has none yet."""
    from flowers_jax import checkpoint

    try:
        manager, step = checkpoint.find(workdir, which)
    except checkpoint.CheckpointError:
        return None
    return step, checkpoint.restore_meta(manager, step)
