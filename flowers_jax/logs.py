"""What a person follows during a run: a progress bar, JSON-lines metrics,
TensorBoard summaries, and a training-curves PNG at the end. Only process 0 writes."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends {"step", "split", ...} records to <workdir>/metrics.jsonl and TensorBoard."""

    def __init__(self, workdir: str, *, resume_step: int | None = None):
        """`resume_step`: the checkpoint step a resumed run starts from. The rows written after it
        by the run that stopped are dropped, since the resumed run writes those steps again."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if self.enabled:
            import tensorflow as tf  # TensorBoard's event writer; tf is already the input pipeline's

            if resume_step is not None and tf.io.gfile.exists(self.path):
                kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
                with tf.io.gfile.GFile(self.path, "w") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in kept))
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in values.items() if isinstance(v, int | float) or hasattr(v, "dtype")}
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)} | values | scalars
        import tensorflow as tf

        with tf.io.gfile.GFile(self.path, "a") as f:  # gfile: the workdir may be gs://
            f.write(json.dumps(record) + "\n")

        with self._tb.as_default(step=int(step)):
            for k, v in scalars.items():
                tf.summary.scalar(f"{split}/{k}", v)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One tqdm bar per epoch: step, loss, img/s, ETA. Plain lines when not on a terminal."""

    def __init__(self, total: int, desc: str, *, batch_size: int, initial: int = 0):
        from tqdm import tqdm

        self.enabled = jax.process_index() == 0
        self.batch_size = batch_size
        self._last = (time.perf_counter(), initial)
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=not self.enabled,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
        )

    def update(self, step_in_epoch: int, **postfix: float) -> None:
        now = time.perf_counter()
        t0, s0 = self._last
        if step_in_epoch > s0 and now > t0:
            postfix["img/s"] = (step_in_epoch - s0) * self.batch_size / (now - t0)
        self._last = (now, step_in_epoch)
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(step_in_epoch - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def read_metrics(workdir: str) -> list[dict]:
    import tensorflow as tf

    path = os.path.join(workdir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, filename: str = "training_curves.png") -> str | None:
    """Loss, accuracy and macro-F1 against step, train vs val; returns the PNG's path."""
    if jax.process_index() != 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("loss", "accuracy", "macro_f1"), strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            points = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split, markersize=4)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    stages = [r for r in records if r["split"] == "stage"]
    for r in stages:
        for ax in axes:
            ax.axvline(r["step"], color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    path = os.path.join(workdir, filename)
    save_figure(fig, path)
    return path


def save_figure(fig: Any, path: str, dpi: int = 100) -> None:
    """Saves a matplotlib figure as PNG to a local or gs:// path, and closes it."""
    import matplotlib.pyplot as plt
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
