"""EfficientNet-B0 from Keras's ImageNet weights (downloaded once through keras.applications).

Command:
  python -m flowers_jax.main --config configs/effnet_b0.py --workdir workdirs/b0
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "efficientnet_b0"
    c.pretrained = "keras:EfficientNetB0"
    return c
