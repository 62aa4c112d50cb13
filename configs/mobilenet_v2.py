"""MobileNetV2 (width 1.0) from Keras's ImageNet weights (downloaded once).

Command:
  python -m flowers_jax.main --config configs/mobilenet_v2.py --workdir workdirs/mnv2
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "mobilenet_v2"
    c.pretrained = "keras:MobileNetV2"
    return c
