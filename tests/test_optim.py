"""Parameter groups, staged freezing and the train step (no input pipeline needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import default
from flowers_jax import models, optim
from flowers_jax.state import new_state
from flowers_jax.steps import make_train_step

NAME = "mobilenet_v2_035"


def _config(**stage_kwargs):
    c = default.get_config()
    c.model, c.num_classes = NAME, 5
    return c, default.stage("s", epochs=1, lr=1e-2, **stage_kwargs)


def _setup(stage, config):
    model = models.create(NAME, config.num_classes)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    groups = optim.param_groups(variables["params"], stage, models.get_arch(NAME))
    tx = optim.make_optimizer(config, stage, groups, steps=10, steps_per_epoch=10)
    return model, variables, groups, tx


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(0, 255, (8, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 5, 8), jnp.int32),
    }


def _flat(tree):
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_frozen_parameters_stay_bit_identical_and_hold_no_optimizer_state():
    config, stage = _config(train="head,last_blocks:2")
    model, variables, groups, tx = _setup(stage, config)
    state = new_state(variables, tx, seed=0, ema=False)
    step = jax.jit(
        make_train_step(
            model, tx, update_batch_stats=False, label_smoothing=0.1, class_weights=jnp.ones(5), ema_decay=0.0
        )
    )
    for i in range(3):
        state, m = step(state, _batch(i))
    assert np.isfinite(float(m["loss"]))
    before, after = _flat(variables["params"]), _flat(state.params)
    labels = _flat(groups.labels)
    frozen = [p for p, lab in labels.items() if lab == optim.FROZEN]
    trained = [p for p, lab in labels.items() if lab != optim.FROZEN]
    assert "backbone/Conv1/kernel" in frozen and "head/predictions/kernel" in trained
    assert "backbone/block_16_project/kernel" in trained and "backbone/Conv_1/kernel" in trained
    for p in frozen:
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert all(not np.array_equal(after[p], before[p]) for p in trained if p.endswith("kernel"))
    # Frozen BatchNorm: running statistics untouched.
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, variables["batch_stats"])
    # Optimizer state: Adam's moments exist for trainable values only (plus scalar counters).
    state_values = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    trainable_values = sum(before[p].size for p in trained)
    assert state_values == 2 * trainable_values


def test_batchnorm_mode_is_separate_from_freezing():
    config, stage = _config(train="head", bn="train")
    model, variables, _, tx = _setup(stage, config)
    state = new_state(variables, tx, seed=0, ema=False)
    step = jax.jit(
        make_train_step(
            model, tx, update_batch_stats=True, label_smoothing=0.0, class_weights=jnp.ones(5), ema_decay=0.0
        )
    )
    state, _ = step(state, _batch())
    # Backbone parameters frozen, yet its BatchNorm statistics moved.
    jax.tree.map(np.testing.assert_array_equal, state.params["backbone"], variables["params"]["backbone"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.batch_stats, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_group_table_and_learning_rate_scales():
    config, stage = _config(train="all", lr_scale="backbone=0.1")
    _, variables, groups, _ = _setup(stage, config)
    assert groups.scales == {"lr x0.1": 0.1, "lr x1": 1.0}
    assert "lr x0.1" in groups.table and "0.001" in groups.table and "frozen" not in groups.table
    labels = _flat(groups.labels)
    assert {labels["head/predictions/kernel"], labels["backbone/Conv1/kernel"]} == {"lr x1", "lr x0.1"}


@pytest.mark.parametrize(
    "train, lr_scale, message",
    [
        ("re:nothing/.*", "", "matches no parameter"),
        ("all", "backbone=0.1,re:backbone/Conv1/.*=0.5", "more than one group"),
        ("middle", "", "unknown selector"),
        ("last_blocks:99", "", "has 17 blocks"),
    ],
)
def test_bad_groups_refuse_to_start(train, lr_scale, message):
    config, stage = _config(train=train, lr_scale=lr_scale)
    with pytest.raises(optim.ParamGroupError, match=message):
        _setup(stage, config)


def test_schedule_warms_up_then_decays():
    stage = ml_collections.ConfigDict(dict(lr=1.0, warmup_epochs=1.0, end_lr_ratio=0.0))
    lr = optim.schedule(stage, steps=40, steps_per_epoch=10, scale=0.5)
    assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(0.5) and float(lr(40)) == pytest.approx(0.0)
    assert float(lr(5)) == pytest.approx(0.25)


def _pull(decay_to, train="all"):
    """(anchor, params, deltas, groups, opt_state) of one update with zero gradients from params =
    anchor * 1.5 + 0.1, under weight decay 0.1 at lr 1e-2 (no warmup)."""
    config, stage = _config(train=train)
    config.optimizer.weight_decay, config.optimizer.decay_to = 0.1, decay_to
    _, anchor, groups, tx = _setup(stage, config)
    anchor = anchor["params"]
    opt_state = tx.init(anchor)  # as new_state does: the optimizer starts on the loaded weights
    params = jax.tree.map(lambda a: a * 1.5 + 0.1, anchor)
    deltas, opt_state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), opt_state, params)
    return _flat(anchor), _flat(params), _flat(deltas), _flat(groups.labels), opt_state


def test_decay_to_pretrained_pulls_the_backbone_toward_its_init_and_the_head_toward_zero():
    anchor, params, deltas, _, _ = _pull("pretrained")
    step = 1e-2 * 0.1  # lr x weight decay: Adam's update of a zero gradient is 0
    for path in ("backbone/Conv1/kernel", "backbone/block_16_project/kernel"):
        np.testing.assert_allclose(deltas[path], -step * (params[path] - anchor[path]), rtol=1e-5, err_msg=path)
    # The head is new: its random init is no prior, it decays toward zero (L2-SP's L2 on new layers).
    np.testing.assert_allclose(deltas["head/predictions/kernel"], -step * params["head/predictions/kernel"], rtol=1e-5)
    for path in ("backbone/bn_Conv1/scale", "head/predictions/bias"):  # weight_decay_exclude: no decay
        np.testing.assert_array_equal(deltas[path], 0.0, err_msg=path)


def test_decay_to_zero_is_unchanged():
    anchor, params, deltas, _, opt_state = _pull("zero")
    for path in ("backbone/Conv1/kernel", "head/predictions/kernel"):
        np.testing.assert_allclose(deltas[path], -1e-3 * params[path], rtol=1e-5, err_msg=path)
    np.testing.assert_array_equal(deltas["backbone/bn_Conv1/scale"], 0.0)
    # Nothing anchored: the state is optax.adamw's (Adam's two moments per value, scalar counters).
    assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0) == 2 * sum(x.size for x in anchor.values())


def test_only_trainable_decayed_backbone_parameters_hold_an_anchor():
    anchor, params, deltas, labels, opt_state = _pull("pretrained", train="head,last_blocks:2")
    is_anchor = lambda x: isinstance(x, optim.AnchorState)  # noqa: E731
    flat = {}  # every anchored value, by parameter path
    for node in filter(is_anchor, jax.tree.leaves(opt_state, is_leaf=is_anchor)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(node.anchor):
            flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    want = {
        p
        for p, lab in labels.items()
        if lab != optim.FROZEN and p.startswith("backbone/") and not p.endswith(("bias", "scale"))
    }
    assert set(flat) == want and "backbone/Conv1/kernel" not in flat
    for p in want:
        np.testing.assert_array_equal(flat[p], anchor[p], err_msg=p)
    # Frozen parameters: untouched, no decay toward anything.
    np.testing.assert_array_equal(deltas["backbone/Conv1/kernel"], 0.0)


def test_the_abstract_state_of_a_run_with_ema_and_l2sp_builds():
    """What resume and every checkpoint reader restore against (state.abstract_state): the EMA copy
    and L2-SP's anchor are copies that must be traced, not taken of bare ShapeDtypeStructs."""
    from flowers_jax.state import abstract_state

    config, _ = _config(train="all")
    config.stage_order, config.ema_decay, config.optimizer.decay_to = "all", 0.99, "pretrained"
    abstract = abstract_state(config, models.create(NAME, config.num_classes), 0)
    is_anchor = lambda x: isinstance(x, optim.AnchorState)  # noqa: E731
    assert any(map(is_anchor, jax.tree.leaves(abstract.opt_state, is_leaf=is_anchor)))
    assert jax.tree.structure(abstract.ema_params) == jax.tree.structure(abstract.params)
