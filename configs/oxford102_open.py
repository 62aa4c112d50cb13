"""The Oxford-102 recipe with 20 classes left out entirely: the open-set ("not one of my flowers")
measurement, and the classes the web page's "Add a species" can be measured on.

Command:
  python -m flowers_jax.data.convert oxford102 --input ../shared/data/oxford102 \
      --output /tmp/oxford102_open --sizes 224 --hold-out-classes 20
  python -m flowers_jax.main --config configs/oxford102_open.py --workdir workdirs/oxford102_open \
      --config.data.data_dir=/tmp/oxford102_open
  python benchmarks/trust.py --workdir workdirs/oxford102 --data-dir /tmp/oxford102_tfrec \
      --open-workdir workdirs/oxford102_open --open-data-dir /tmp/oxford102_open
Expected: README "Trust" (AUROC of known-vs-unknown on the test photos of both groups). The held-out
classes (seed 0) are listed in the data's dataset.json; their val photos (`val_unknown`) choose the
open-set score, their test photos (`test_unknown`) measure it.
"""

from configs import oxford102


def get_config():
    c = oxford102.get_config()
    c.num_classes = 82  # the 102 Oxford classes less the 20 held out
    c.data.tfrecord_size = 224  # the leave-out run of the README's Trust table read 224 records
    return c
