"""MobileNetV2 (width 1.0) from Keras's ImageNet weights (downloaded once).

Command:
  python -m flowers_jax.main --config configs/mobilenet_v2.py --workdir workdirs/mnv2 \
      --config.data.data_dir=/path/to/competition/tfrecords

Expected: not measured yet (no Kaggle TFRecords and no download of Keras weights on our
machines).
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "mobilenet_v2"
    c.pretrained = "keras:MobileNetV2"
    return c
