"""Every exported artefact against the Flax model, on the same real images.

    report = compare(flax_logits, {"onnxruntime": (logits, probs), ...})
    check(report)      # ParityError with the numbers if any runtime falls short

Each runtime is judged by its own outputs: its logits and its *own* probabilities
output (what the web page shows), against Flax's logits and their softmax.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import tempfile
from collections.abc import Mapping

import numpy as np

# What the exporter demands of every float32 artefact.
MIN_TOP1_AGREEMENT = 1.0
MAX_ABS_PROB = 1e-3

Outputs = tuple[np.ndarray, np.ndarray]  # (logits [N, C], probabilities [N, C])


class ParityError(RuntimeError):
    """An exported model disagrees with the Flax model beyond the thresholds."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :k]


def compare_one(reference: np.ndarray, logits: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Agreement of one runtime's outputs ([N, C] each) with the reference logits [N, C]."""
    reference = np.asarray(reference, np.float64)
    logits, probabilities = np.asarray(logits, np.float64), np.asarray(probabilities, np.float64)
    if logits.shape != reference.shape or probabilities.shape != reference.shape:
        raise ParityError(f"output shapes {logits.shape}/{probabilities.shape}, reference {reference.shape}")
    k = min(5, reference.shape[-1])
    ref_top, top = _top_k(reference, k), _top_k(logits, k)
    same_top_k = [set(a) == set(b) for a, b in zip(ref_top, top, strict=True)]
    return {
        "max_abs_logit": float(np.abs(logits - reference).max()),
        "relative_logit_error": float(np.linalg.norm(logits - reference) / max(np.linalg.norm(reference), 1e-30)),
        "max_abs_prob": float(np.abs(probabilities - softmax(reference)).max()),
        "top1_agreement": float(np.mean(ref_top[:, 0] == top[:, 0])),
        f"top{k}_agreement": float(np.mean(same_top_k)),
    }


def compare(reference: np.ndarray, runtimes: Mapping[str, Outputs]) -> dict:
    """{"reference": ..., "runtimes": {name: compare_one(...)}} for every runtime."""
    return {
        "reference": "flax",
        "thresholds": {"min_top1_agreement": MIN_TOP1_AGREEMENT, "max_abs_prob": MAX_ABS_PROB},
        "runtimes": {name: compare_one(reference, *out) for name, out in runtimes.items()},
    }


def failures(report: dict) -> list[str]:
    """The runtimes that miss a threshold, each with its numbers.

    `report["thresholds"]["max_abs_prob_overrides"]` ({runtime: limit}, optional) gives some
    runtimes their own |dprob| limit (a float16 model's, say); top-1 agreement is never relaxed.
    """
    t = report["thresholds"]
    overrides = t.get("max_abs_prob_overrides", {})
    out = []
    for name, r in report["runtimes"].items():
        limit = overrides.get(name, t["max_abs_prob"])
        if r["top1_agreement"] < t["min_top1_agreement"] or r["max_abs_prob"] > limit:
            out.append(
                f"{name}: top-1 agreement {r['top1_agreement']:.2%} (need {t['min_top1_agreement']:.0%}), "
                f"max |dprob| {r['max_abs_prob']:.3g} (limit {limit:g}), max |dlogit| {r['max_abs_logit']:.3g}"
            )
    return out


def check(report: dict) -> None:
    """Raises `ParityError` naming every runtime that misses a threshold, with its numbers."""
    bad = failures(report)
    if bad:
        raise ParityError("exported model(s) disagree with Flax:\n  " + "\n  ".join(bad))


def run_tfjs_node(
    model_json: str | pathlib.Path, images: np.ndarray, *, node_dir: str | pathlib.Path, backend: str = "wasm"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Runs the TF.js graph model in Node (`export/tfjs_predict.mjs`, @tensorflow/tfjs 4.22).

    Args:
      model_json: the exported model.json.
      images: [N, S, S, 3] float32 RGB in [0, 255].
      node_dir: the folder holding tfjs_predict.mjs and its node_modules.
      backend: TF.js backend ("wasm" or "cpu").
    Returns:
      logits [N, C], probabilities [N, C], milliseconds per image.
    """
    node_dir = pathlib.Path(node_dir)
    images = np.ascontiguousarray(images, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        x, y = pathlib.Path(tmp, "images.f32"), pathlib.Path(tmp, "outputs.f32")
        images.tofile(x)
        cmd = ["node", str(node_dir / "tfjs_predict.mjs"), "--model", str(pathlib.Path(model_json).resolve())]
        cmd += ["--images", str(x), "--shape", ",".join(map(str, images.shape)), "--out", str(y)]
        cmd += ["--backend", backend]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=node_dir)
        if done.returncode != 0:
            raise RuntimeError(f"TF.js in Node failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        out = np.fromfile(y, np.float32).reshape(2, len(images), info["classes"])
    return out[0], out[1], float(info["ms_per_image"])
