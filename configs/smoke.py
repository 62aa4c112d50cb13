"""Smoke run: makes a tiny synthetic dataset in the workdir and trains on it, on CPU, in < 2 min.

Command:
  python -m flowers_jax.main --config configs/smoke.py --workdir /tmp/smoke
Expected: finishes in under 2 minutes on 2 CPU cores with val accuracy well above chance (1/8);
leaves checkpoints/, metrics.jsonl, tensorboard/ and training_curves.png in the workdir.
"""

import ml_collections

from configs import default


def get_config():
    c = default.get_config()
    # Real transfer learning, small: EfficientNet-Lite0 from the ImageNet weights that ship with
    # the package (offline), at 64 px, on 8 synthetic classes.
    c.model = "efficientnet_lite0"
    c.pretrained = "torch:efficientnet_lite0"
    c.num_classes = 8
    c.depthwise_impl = "conv"  # compiles in half the time of "shift" at this size
    # The dataset: learnable synthetic images written to <workdir>/data before training.
    c.synthetic_data = ml_collections.ConfigDict(dict(train_per_class=24, val_per_class=13, test_examples=20))
    c.data.image_size = 64
    c.batch_size = 16
    c.stage_order = "head,top"
    c.stages.head.epochs = 2
    c.stages.head.lr = 3e-3
    c.stages.top.epochs = 1
    c.stages.top.train = "head,last_blocks:2"
    c.stages.top.lr = 1e-3
    c.early_stopping.patience = 0
    c.checkpoint.every_steps = 10
    c.log_every_steps = 5
    return c
