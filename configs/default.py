"""Defaults every config starts from; a config overrides only what differs.

Not a runnable config by itself: see effnet_lite0.py, effnet_b0.py, mobilenet_v2.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a name from flowers_jax.models.names(), and where its weights come from
    # ("keras:EfficientNetB0", "torch:efficientnet_lite0", a file, or "" for random init).
    c.model = "efficientnet_lite0"
    c.pretrained = "torch:efficientnet_lite0"
    c.num_classes = 104
    c.image_size = 224
    c.dtype = "float32"  # compute dtype; "bfloat16" on TPU/GPU. Parameters stay float32.
    c.seed = 0
    return c
