"""EfficientNet-Lite0 from ImageNet weights that ship with the package: the offline default.

Command:
  python -m flowers_jax.main --config configs/effnet_lite0.py --workdir workdirs/lite0 \
      --config.data.data_dir=/path/to/competition/tfrecords

Expected: not measured yet on the Kaggle TFRecords (none are on our machines); the
Oxford-102 fine-tune of this recipe is the README's "Results" run (to come).
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "efficientnet_lite0"
    c.pretrained = "torch:efficientnet_lite0"
    return c
