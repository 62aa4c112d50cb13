"""Parameter groups and staged unfreezing, as optax transformations.

A stage says which parameters train (selectors resolved against the model's
architecture table into regexes over parameter paths), at what learning rate,
with which BatchNorm mode. Every parameter falls in exactly one group: "frozen"
(optax.set_to_zero: no optimizer state at all) or a trainable group of one
learning-rate scale. The run refuses to start when a selector matches nothing
or a parameter would fall in two groups, and prints the group table first.

Parameter paths look like "backbone/block6d_project_conv/kernel", "head/predictions/bias".

Selectors (comma-separated in a stage's `train` and `lr_scale` keys):
  all, head, backbone, stem, top    the obvious subtrees (top = last 1x1 conv + its BN)
  last_blocks:K                     the last K blocks of the table, plus top
  re:REGEX                          any regex over parameter paths (re.fullmatch)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from flowers_jax.models.mbconv import Arch

FROZEN = "frozen"


class ParamGroupError(ValueError):
    """A stage's selectors do not partition the parameters cleanly."""


def selector_regex(selector: str, arch: Arch) -> str:
    """Regex (for re.fullmatch over parameter paths) of one selector."""
    n = arch.names
    selector = selector.strip()
    if selector == "all":
        return ".*"
    if selector == "head":
        return "head/.*"
    if selector == "backbone":
        return "backbone/.*"
    if selector == "stem":
        return f"backbone/({re.escape(n.stem_conv)}|{re.escape(n.stem_bn)})/.*"
    top = f"{re.escape(n.top_conv)}|{re.escape(n.top_bn)}"
    if selector == "top":
        return f"backbone/({top})/.*"
    if selector.startswith("last_blocks:"):
        try:
            k = int(selector.split(":", 1)[1])
        except ValueError:
            raise ParamGroupError(f"{selector}: K must be a whole number of blocks") from None
        if not 0 <= k <= len(arch.blocks):
            raise ParamGroupError(f"{selector}: {arch.name} has {len(arch.blocks)} blocks")
        prefixes = [re.escape(b.prefix) for b in arch.blocks[len(arch.blocks) - k :]]
        return f"backbone/(({'|'.join(prefixes) or '(?!)'}).*|{top})/.*"
    if selector.startswith("re:"):
        try:
            re.compile(selector[3:])
        except re.error as e:
            raise ParamGroupError(f"{selector}: not a regular expression ({e})") from None
        return selector[3:]
    raise ParamGroupError(
        f"unknown selector {selector!r}; use all, head, backbone, stem, top, last_blocks:K or re:REGEX"
    )


def _parse_scales(spec: str) -> list[tuple[str, float]]:
    """ "backbone=0.1,head=1" -> [("backbone", 0.1), ("head", 1.0)]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ParamGroupError(f"lr_scale entry {item!r} must be SELECTOR=FACTOR")
        sel, factor = item.rsplit("=", 1)
        try:
            value = float(factor)
        except ValueError:
            raise ParamGroupError(f"lr_scale entry {item!r}: {factor!r} is not a number") from None
        if not value > 0:
            raise ParamGroupError(f"lr_scale entry {item!r}: the factor must be > 0")
        out.append((sel, value))
    return out


def group_label(scale: float) -> str:
    return f"lr x{scale:g}"


@dataclasses.dataclass(frozen=True)
class Groups:
    """labels: params-shaped tree of group labels; scales: label -> learning-rate scale."""

    labels: Any
    scales: dict[str, float]
    table: str


def param_groups(params: Any, stage: ml_collections.ConfigDict, arch: Arch) -> Groups:
    """Assigns every parameter to exactly one group for `stage`.

    Args:
      params: the params tree (arrays or ShapeDtypeStructs).
      stage: has `train` (selectors) and `lr_scale` ("SELECTOR=FACTOR,..."), and `lr`.
      arch: the model's architecture table.
    Raises:
      ParamGroupError: a selector matches no parameter, or a parameter matches two lr_scale entries.
    """
    flat = {"/".join(p): v for p, v in traverse_util.flatten_dict(params).items()}
    train_res = [(s, selector_regex(s, arch)) for s in stage.train.split(",") if s.strip()]
    scale_res = [(s, selector_regex(s, arch), f) for s, f in _parse_scales(stage.get("lr_scale", ""))]
    for sel, rx in train_res + [(s, rx) for s, rx, _ in scale_res]:
        if not any(re.fullmatch(rx, p) for p in flat):
            raise ParamGroupError(f"stage {stage.name!r}: selector {sel!r} matches no parameter of {arch.name}")
    labels, problems = {}, []
    for path in flat:
        if not any(re.fullmatch(rx, path) for _, rx in train_res):
            labels[path] = FROZEN
            continue
        hits = [(s, f) for s, rx, f in scale_res if re.fullmatch(rx, path)]
        if len(hits) > 1:
            problems.append(f"{path} matches lr_scale entries {[s for s, _ in hits]}")
        labels[path] = group_label(hits[0][1] if hits else 1.0)
    if problems:
        raise ParamGroupError(f"stage {stage.name!r}: parameters in more than one group:\n  " + "\n  ".join(problems))
    scales = {group_label(f): f for _, _, f in scale_res} | {group_label(1.0): 1.0}
    scales = {k: v for k, v in scales.items() if k in labels.values()}
    tree = traverse_util.unflatten_dict({tuple(p.split("/")): lab for p, lab in labels.items()})
    return Groups(labels=tree, scales=scales, table=_table(flat, labels, scales, stage.lr))


def _table(flat: Mapping[str, Any], labels: Mapping[str, str], scales: Mapping[str, float], lr: float) -> str:
    rows = {}
    for path, leaf in flat.items():
        n, size = rows.get(labels[path], (0, 0))
        rows[labels[path]] = (n + 1, size + int(np.prod(leaf.shape)))
    lines = [f"  {'group':<14}{'tensors':>9}{'values':>14}{'peak lr':>12}"]
    for label, (n, size) in sorted(rows.items()):
        peak = "frozen" if label == FROZEN else f"{lr * scales[label]:.3g}"
        lines.append(f"  {label:<14}{n:>9}{size:>14,}{peak:>12}")
    return "\n".join(lines)


def _decay_mask(params: Any, exclude: str, *, where: str = "") -> Any:
    """True where weight decay applies: not on paths matching `exclude` (BN scale/bias, biases);
    with `where`, only on paths matching it too (re.match)."""

    def keep(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return re.search(exclude, name) is None and (not where or re.match(where, name) is not None)

    return jax.tree_util.tree_map_with_path(keep, params)


class AnchorState(NamedTuple):
    """anchor: the parameters `decay_toward_anchor` pulls toward (a params-shaped subtree)."""

    anchor: Any


def decay_toward_anchor(weight_decay: float) -> optax.GradientTransformation:
    """L2-SP (Li et al. 2018): adds weight_decay * (params - anchor) to the updates, where
    anchor is a copy of the parameters `init` was called with. `add_decayed_weights` is the
    same with anchor = 0.

    The anchor lives in the optimizer state, so checkpoints carry it and a resume is exact;
    under `optax.masked` / `multi_transform` only the parameters this transformation sees
    hold one (none for frozen groups or for paths the decay mask excludes).
    """

    def init(params: Any) -> AnchorState:
        # A copy: the train step donates the state, and params and anchor must not share buffers.
        return AnchorState(anchor=jax.tree.map(jnp.copy, params))

    def update(updates: Any, state: AnchorState, params: Any = None) -> tuple[Any, AnchorState]:
        if params is None:
            raise ValueError(optax.NO_PARAMS_MSG)
        updates = jax.tree.map(lambda g, p, a: g + weight_decay * (p - a), updates, params, state.anchor)
        return updates, state

    return optax.GradientTransformation(init, update)


DECAY_TO = ("zero", "pretrained")


def decays_to_pretrained(config: ml_collections.ConfigDict) -> bool:
    """config.optimizer.decay_to is "pretrained" (configs saved before the field decay to zero)."""
    return config.optimizer.get("decay_to", "zero") == "pretrained"


def _weight_decay(opt: ml_collections.ConfigDict, decay_to: str) -> optax.GradientTransformation:
    """Decay toward zero, or (L2-SP) the backbone toward the values the optimizer is initialised
    on -- the pretrained weights, see `decay_toward_anchor` -- and the head toward zero: the head
    is new, its random init is no prior worth keeping (the paper's L2 on new layers)."""
    if decay_to == "zero":
        return optax.add_decayed_weights(opt.weight_decay, mask=lambda p: _decay_mask(p, opt.weight_decay_exclude))
    to_anchor = lambda p: _decay_mask(p, opt.weight_decay_exclude, where="backbone/")  # noqa: E731
    to_zero = lambda p: _decay_mask(p, opt.weight_decay_exclude, where="(?!backbone/)")  # noqa: E731
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=to_zero),
        optax.masked(decay_toward_anchor(opt.weight_decay), to_anchor),
    )


def schedule(stage: ml_collections.ConfigDict, steps: int, steps_per_epoch: int, scale: float) -> optax.Schedule:
    """Linear warmup from 0 to lr*scale, then cosine down to lr*scale*end_lr_ratio over the stage."""
    peak = stage.lr * scale
    warmup = min(int(round(stage.warmup_epochs * steps_per_epoch)), max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=peak * stage.end_lr_ratio,
    )


def make_optimizer(
    config: ml_collections.ConfigDict,
    stage: ml_collections.ConfigDict,
    groups: Groups,
    *,
    steps: int,
    steps_per_epoch: int,
) -> optax.GradientTransformation:
    """The optax transformation of one stage.

    Frozen gradients are zeroed first, so that they count neither in the global
    norm that clipping uses nor in any optimizer state.
    """
    opt = config.optimizer
    decay_to = "pretrained" if decays_to_pretrained(config) else "zero"

    def inner(scale: float) -> optax.GradientTransformation:
        lr = schedule(stage, steps, steps_per_epoch, scale)
        mask = lambda p: _decay_mask(p, opt.weight_decay_exclude)  # noqa: E731
        if opt.name == "adamw" and decay_to == "zero":
            # optax.adamw itself, so that today's optimizer state (and checkpoints) stay as they are.
            return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)
        if opt.name == "adamw":  # adamw's own chain, its decay swapped: decoupled from Adam's scaling
            return optax.chain(
                optax.scale_by_adam(b1=opt.b1, b2=opt.b2),
                _weight_decay(opt, decay_to),
                optax.scale_by_learning_rate(lr),
            )
        if opt.name == "sgd":
            return optax.chain(_weight_decay(opt, decay_to), optax.sgd(lr, momentum=opt.momentum, nesterov=True))
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r}; use adamw or sgd")

    zero_frozen = optax.multi_transform(
        {FROZEN: optax.set_to_zero()} | {k: optax.identity() for k in groups.scales}, groups.labels
    )
    chain = [zero_frozen]
    if opt.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(
        optax.multi_transform(
            {FROZEN: optax.set_to_zero()} | {k: inner(s) for k, s in groups.scales.items()}, groups.labels
        )
    )
    return optax.chain(*chain)
