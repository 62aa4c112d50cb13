"""Every exported artefact against the Flax model, on the same real images.

    report = compare(flax, {"onnxruntime": {"logits": ..., "probabilities": ..., "embedding": ...}},
                     temperature=T)
    check(report)      # ParityError with the numbers if any runtime falls short

Each runtime is judged by its own outputs: its logits, its *own* probabilities output (what
the web page shows) against softmax(Flax logits / T), and its embedding against Flax's.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import tempfile
from collections.abc import Mapping

import numpy as np

from flowers_jax.export.twin import EMBEDDING, LOGITS, PROBABILITIES

# What the exporter demands of every float32 artefact.
MIN_TOP1_AGREEMENT = 1.0
MAX_ABS_PROB = 1e-3
# The embedding feeds the page's open-set score and added species: float32 round-off is ~1e-6.
MAX_RELATIVE_EMBEDDING_ERROR = 1e-3

Outputs = dict[str, np.ndarray]  # {"logits": [N, C], "probabilities": [N, C], "embedding": [N, D]}


class ParityError(RuntimeError):
    """An exported model disagrees with the Flax model beyond the thresholds."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the last axis, computed in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :k]


def _relative(x: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(x - reference) / max(np.linalg.norm(reference), 1e-30))


def compare_one(reference: Outputs, outputs: Outputs, *, temperature: float = 1.0) -> dict[str, float]:
    """Agreement of one runtime's outputs with the reference's logits [N, C] and embedding [N, D]."""
    ref = np.asarray(reference[LOGITS], np.float64)
    logits = np.asarray(outputs[LOGITS], np.float64)
    probabilities = np.asarray(outputs[PROBABILITIES], np.float64)
    embedding = np.asarray(outputs[EMBEDDING], np.float64)
    ref_embedding = np.asarray(reference[EMBEDDING], np.float64)
    if logits.shape != ref.shape or probabilities.shape != ref.shape or embedding.shape != ref_embedding.shape:
        raise ParityError(
            f"output shapes {logits.shape}/{probabilities.shape}/{embedding.shape}, reference "
            f"{ref.shape}/{ref_embedding.shape}"
        )
    k = min(5, ref.shape[-1])
    ref_top, top = _top_k(ref, k), _top_k(logits, k)
    same_top_k = [set(a) == set(b) for a, b in zip(ref_top, top, strict=True)]
    return {
        "max_abs_logit": float(np.abs(logits - ref).max()),
        "relative_logit_error": _relative(logits, ref),
        "max_abs_prob": float(np.abs(probabilities - softmax(ref, temperature)).max()),
        "relative_embedding_error": _relative(embedding, ref_embedding),
        "top1_agreement": float(np.mean(ref_top[:, 0] == top[:, 0])),
        f"top{k}_agreement": float(np.mean(same_top_k)),
    }


def compare(reference: Outputs, runtimes: Mapping[str, Outputs], *, temperature: float = 1.0) -> dict:
    """{"reference": ..., "runtimes": {name: compare_one(...)}} for every runtime."""
    return {
        "reference": "flax",
        "temperature": temperature,
        "thresholds": {
            "min_top1_agreement": MIN_TOP1_AGREEMENT,
            "max_abs_prob": MAX_ABS_PROB,
            "max_relative_embedding_error": MAX_RELATIVE_EMBEDDING_ERROR,
        },
        "runtimes": {name: compare_one(reference, out, temperature=temperature) for name, out in runtimes.items()},
    }


def failures(report: dict) -> list[str]:
    """The runtimes that miss a threshold, each with its numbers.

    `report["thresholds"]["max_abs_prob_overrides"]` ({runtime: limit}, optional) gives some
    runtimes their own |dprob| limit (a float16 model's, say); top-1 agreement is never relaxed.
    """
    t = report["thresholds"]
    overrides = t.get("max_abs_prob_overrides", {})
    emb_limit = t.get("max_relative_embedding_error", MAX_RELATIVE_EMBEDDING_ERROR)
    emb_overrides = t.get("max_relative_embedding_error_overrides", {})
    out = []
    for name, r in report["runtimes"].items():
        limit = overrides.get(name, t["max_abs_prob"])
        e_limit = emb_overrides.get(name, emb_limit)
        emb = r.get("relative_embedding_error", 0.0)
        if r["top1_agreement"] < t["min_top1_agreement"] or r["max_abs_prob"] > limit or emb > e_limit:
            out.append(
                f"{name}: top-1 agreement {r['top1_agreement']:.2%} (need {t['min_top1_agreement']:.0%}), "
                f"max |dprob| {r['max_abs_prob']:.3g} (limit {limit:g}), max |dlogit| {r['max_abs_logit']:.3g}, "
                f"embedding relative error {emb:.3g} (limit {e_limit:g})"
            )
    return out


def check(report: dict) -> None:
    """Raises `ParityError` naming every runtime that misses a threshold, with its numbers."""
    bad = failures(report)
    if bad:
        raise ParityError("exported model(s) disagree with Flax:\n  " + "\n  ".join(bad))


def run_tfjs_node(
    model_json: str | pathlib.Path, images: np.ndarray, *, node_dir: str | pathlib.Path, backend: str = "wasm"
) -> tuple[Outputs, float]:
    """Runs the TF.js graph model in Node (`export/tfjs_predict.mjs`, @tensorflow/tfjs 4.22).

    Args:
      model_json: the exported model.json.
      images: [N, S, S, 3] float32 RGB in [0, 255].
      node_dir: the folder holding tfjs_predict.mjs and its node_modules.
      backend: TF.js backend ("wasm" or "cpu").
    Returns:
      ({"logits": [N, C], "probabilities": [N, C], "embedding": [N, D]}, milliseconds per image).
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
        flat = np.fromfile(y, np.float32)
    outputs, offset = {}, 0
    for name, width in info["outputs"]:  # [name, width] pairs, in the order written
        outputs[name] = flat[offset : offset + len(images) * width].reshape(len(images), width)
        offset += len(images) * width
    return outputs, float(info["ms_per_image"])
