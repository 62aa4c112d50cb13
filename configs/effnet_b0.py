"""EfficientNet-B0 from Keras's ImageNet weights (downloaded once through keras.applications).

Command:
  python -m flowers_jax.main --config configs/effnet_b0.py --workdir workdirs/b0 \
      --config.data.data_dir=/path/to/competition/tfrecords

Expected: not measured yet (no Kaggle TFRecords and no download of Keras weights on our
machines); the earlier Keras write-up reached 83.9% val accuracy with this backbone.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model = "efficientnet_b0"
    c.pretrained = "keras:EfficientNetB0"
    return c
