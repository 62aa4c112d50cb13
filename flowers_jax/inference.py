"""Trained variables out of a workdir, for evaluation, prediction and export.

Restoring is owned by `flowers_jax.checkpoint` (with its look-ups, the fallback past an unreadable
step and the compatibility check); this name stays for the callers that load a model to run it.
"""

from __future__ import annotations

from flowers_jax import checkpoint
from flowers_jax.checkpoint import load_for_inference

__all__ = ["checkpoint", "load_for_inference"]
