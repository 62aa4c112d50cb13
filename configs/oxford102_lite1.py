"""EfficientNet-Lite1 fine-tuned on Oxford-102: configs/oxford102.py's recipe on Lite1, to measure
whether Lite1 (ImageNet 76.7%, between Lite0's 75.1% and Lite2's 77.6%) earns its place.

Command: `python benchmarks/oxford102.py --model lite1` (or `python -m flowers_jax.main --config
configs/oxford102_lite1.py ...` as in configs/oxford102_lite2.py). Expected: not measured yet.

Lite1's native size is 240; it is shown its photos 32 px above that, at 272, as the recipe shows
Lite0 (native 224) at 256 -- from the same stored 448 records. Everything else is the recipe's.
"""

from configs import oxford102


def get_config():
    c = oxford102.get_config()
    c.model = "efficientnet_lite1"
    c.pretrained = "torch:efficientnet_lite1"
    c.data.image_size = 272
    return c
