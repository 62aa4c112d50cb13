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
        ("kernels", "tpu", "must be one of 'auto', 'cpu', 'xla'"),
        ("depthwise_impl", "fast", "must be one of 'auto', 'conv', 'shift'"),
        ("bn_momentum", 1.0, "must be None (the architecture's momentum) or in [0, 1)"),
        ("log_every_steps", 0, "must be >= 1"),
        ("data.image_size", 0, "must be >= 16 pixels"),
        ("data.tfrecord_size", -1, "must be 0"),
        ("eval.tta", "flip,mirror", "unknown mode(s) ['mirror']"),
        ("eval.calibration", "on", "must be 'auto' or 'off'"),
        ("trust.target_risk", 0.0, "must be in (0, 1)"),
        ("trust.selective_score", "entropy", "must be 'auto' or one of"),
        ("trust.openset_score", "knn", "must be one of"),
        ("trust.known_recall", 1.5, "must be in [0.5, 1]"),
        ("trust.add_species.scale", 0.0, "must be > 0"),
        ("trust.add_species.margin", float("nan"), "must be a finite number"),
        ("optimizer.decay_to", "init", "must be one of 'zero', 'pretrained'"),
        ("mixup_alpha", -0.2, "must be a number >= 0"),
        ("cutmix_alpha", float("inf"), "must be a number >= 0"),
        ("dropout_rate", 1.0, "must be None (the architecture's rate) or in [0, 1)"),
        ("drop_connect_rate", -0.1, "must be None (the architecture's rate) or in [0, 1)"),
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

    for name in (
        *("default", "smoke", "oxford102", "oxford102_open", "oxford102_lite1", "oxford102_lite2"),
        *("effnet_lite0", "effnet_b0", "mobilenet_v2"),
    ):
        config_lib.validate(importlib.import_module(f"configs.{name}").get_config())


def test_bn_momentum_none_is_the_architectures_and_a_number_is_used_as_given():
    from flowers_jax.state import build_model

    config = default.get_config()
    config.model = "mobilenet_v2_035"  # its table's momentum is 0.999, not Keras's usual 0.99
    assert config.bn_momentum is None and build_model(config).backbone.bn_momentum is None
    config.bn_momentum = 0.0  # a literal 0 (running averages = the last batch's), as models.create takes it
    config_lib.validate(config)
    assert build_model(config).backbone.bn_momentum == 0.0
    config.kernels = "xla"
    assert build_model(config).backbone.kernels == "xla"


def test_decay_to_pretrained_needs_pretrained_weights():
    config = default.get_config()
    config.optimizer.decay_to = "pretrained"
    config_lib.validate(config)
    config.pretrained = ""
    with pytest.raises(config_lib.ConfigError, match=r"^config.optimizer.decay_to: .*config.pretrained is empty"):
        config_lib.validate(config)


def test_dropout_and_drop_connect_none_are_the_architectures():
    from flowers_jax import models
    from flowers_jax.state import build_model

    config = default.get_config()  # EfficientNet-Lite0: head dropout 0.2, drop-connect 0.2 over the blocks
    model, arch = build_model(config), models.get_arch(config.model)
    assert model.dropout_rate == arch.dropout_rate == 0.2 and model.backbone.arch == arch
    assert models.with_drop_connect(arch, 0.2) == arch  # the table's own rule
    config.dropout_rate, config.drop_connect_rate = 0.4, 0.3
    config_lib.validate(config)
    model = build_model(config)
    rates = [b.drop_rate for b in model.backbone.arch.blocks]
    assert model.dropout_rate == 0.4 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.3 * 15 / 16)
    config.model = "mobilenet_v2_035"  # no stochastic depth of its own; a rate turns it on
    assert {b.drop_rate for b in build_model(config).backbone.arch.blocks} != {0.0}
    config.drop_connect_rate = None
    assert {b.drop_rate for b in build_model(config).backbone.arch.blocks} == {0.0}
