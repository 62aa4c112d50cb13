"""Classification metrics from a confusion matrix (exact, additive across batches and hosts).

Computed on device as a [C, C] count matrix per batch -- a sum, so it is the same
on 1 device or a pod and costs no gather of predictions -- and turned into
accuracy / precision / recall / F1 on the host. Averages follow scikit-learn's
conventions: macro averages run over the classes present in the labels or the
predictions, and a 0/0 precision or recall counts as 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, logits: jax.Array, mask: jax.Array) -> jax.Array:
    """[C, C] int32 counts, rows = true class, columns = predicted class.

    Args:
      labels: [B] int32.
      logits: [B, C].
      mask: [B], 1 for real examples and 0 for padding.
    """
    num_classes = logits.shape[-1]
    preds = jnp.argmax(logits, axis=-1)
    true_1h = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask.astype(jnp.int32)[:, None]
    pred_1h = jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
    return true_1h.T @ pred_1h


def from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy and macro/weighted precision, recall, F1 of a [C, C] confusion matrix."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    total = cm.sum()
    weights = support / max(total, 1)
    return {
        "accuracy": float(tp.sum() / max(total, 1)),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * weights).sum()),
        "examples": int(total),
    }
