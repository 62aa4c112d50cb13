"""TensorFlow, imported once for the input pipeline and kept off the accelerators.

TF only reads and decodes data here. If a GPU build of TF is installed it would otherwise reserve
the GPU's memory that JAX needs, so its accelerators are hidden (this has no effect on
tensorflow-cpu).
"""

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter; set it to 0 to see it

import tensorflow as tf  # noqa: E402

# RuntimeError: TF already initialised its devices (too late, and then nothing to do).
with contextlib.suppress(RuntimeError, ValueError):
    tf.config.set_visible_devices([], "GPU")

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["AUTOTUNE", "tf"]
