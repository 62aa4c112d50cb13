"""Every bad config value stops the run before any compute, naming the key and what to do."""

from __future__ import annotations

import pytest

from configs import default
from flowers_jax import config as config_lib


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stages.all.train", "re:([", "not a regular expression"),
        ("stages.all.lr_scale", "head=x", "'x' is not a number"),
        ("stages.all.lr_scale", "head=0", "must be > 0"),
        ("stages.top.train", "last_blocks:two", "K must be a whole number"),
        ("log_every_steps", 0, "must be >= 1"),
        ("data.image_size", 0, "must be >= 16 pixels"),
        ("data.tfrecord_size", -1, "must be 0"),
        ("eval.tta", "flip,mirror", "unknown mode(s) ['mirror']"),
        ("eval.calibration", "on", "must be 'auto' or 'off'"),
        ("trust.target_risk", 0.0, "must be in (0, 1)"),
        ("trust.selective_score", "entropy", "must be 'auto' or one of"),
        ("trust.openset_score", "mahalanobis", "must be one of"),
        ("trust.known_recall", 1.5, "must be in [0.5, 1]"),
    ],
)
def test_bad_value_names_the_key(key, value, message):
    config = default.get_config()
    node, leaf = config, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value).startswith(f"config.{key}: ") and message in str(e.value), str(e.value)


def test_the_defaults_and_every_shipped_config_are_valid():
    import importlib

    for name in ("default", "smoke", "oxford102", "oxford102_open", "effnet_lite0", "effnet_b0", "mobilenet_v2"):
        config_lib.validate(importlib.import_module(f"configs.{name}").get_config())
