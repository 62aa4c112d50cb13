"""Copies named source tensors into a Flax variable tree, with a full account.

Every importer (Keras, PyTorch) reduces to: for each Flax leaf, which source
tensor feeds it and how its layout changes. `port` does the bookkeeping once:
shape checks, each source tensor used exactly once, nothing silently skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

Path = tuple[str, ...]
# Flax leaf path -> (source key, layout transform) or None when the source lacks it.
Lookup = Callable[[Path], "tuple[str, Callable[[np.ndarray], np.ndarray]] | None"]


class WeightMismatchError(ValueError):
    """Source weights do not fit the model: names or shapes differ."""


def path_str(path: Path) -> str:
    return "/".join(path)


@dataclasses.dataclass
class LoadReport:
    """What a load did to every variable.

    Attributes:
      source: where the weights came from.
      model_name: the model they were loaded for.
      loaded: Flax path ("params/backbone/stem_conv/kernel") -> source key(s) it came from.
      initialised: Flax path -> why it was freshly initialised instead.
      ignored: source key -> why it does not enter the computation.
      uses: source key -> how many variables it fed (1 for each, when all is well).
    """

    source: str
    model_name: str = ""
    loaded: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)
    uses: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        n_init = len(self.initialised)
        lines = [
            f"Loaded {len(self.loaded)} variables from {self.source}; "
            f"{n_init} initialised fresh; {len(self.ignored)} source tensors ignored."
        ]
        lines += [f"  initialised {p}: {why}" for p, why in sorted(self.initialised.items())]
        by_reason: dict[str, list[str]] = {}
        for k, why in sorted(self.ignored.items()):
            by_reason.setdefault(why, []).append(k)
        for why, keys in by_reason.items():
            example = keys[0] if len(keys) == 1 else f"{len(keys)} tensors, e.g. {keys[0]}"
            lines.append(f"  ignored {example}: {why}")
        return "\n".join(lines)


def _raise_mismatch(report: LoadReport, problems: list[str]) -> None:
    shown = "\n  ".join(problems[:40])
    more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
    raise WeightMismatchError(
        f"{report.source} does not fit model {report.model_name!r} ({len(problems)} problem(s)); "
        f"nothing was loaded:\n  {shown}{more}"
    )


def port(
    target: Mapping[str, Any],
    source: Mapping[str, np.ndarray],
    lookup: Lookup,
    *,
    report: LoadReport,
    ignorable: Mapping[str, str] | None = None,
    preset: Mapping[Path, np.ndarray] | None = None,
    preset_from: str = "",
    preset_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Fills every leaf of `target` (a tree of arrays or ShapeDtypeStructs) from `source`.

    Args:
      target: the Flax variables to fill (only shapes/dtypes are read).
      source: source tensors by key.
      lookup: Flax path -> (source key, layout transform), or None if unmapped.
      report: filled in place.
      ignorable: source keys that legitimately feed nothing -> why.
      preset: Flax paths the caller derived itself (e.g. folded preprocessing) -> value.
      preset_from: how the preset values were derived (for the report).
      preset_keys: source keys the preset values consumed (counted once each).
    Returns:
      The filled variable tree (NumPy arrays).
    Raises:
      WeightMismatchError: a leaf with no source tensor, a shape mismatch, or a
        source tensor that nothing used. Lists every problem at once.
    """
    preset = dict(preset or {})
    ignorable = dict(ignorable or {})
    problems, out = [], {}
    used = {k: 1 for k in preset_keys}
    for path, leaf in traverse_util.flatten_dict(dict(target)).items():
        name = path_str(path)
        if path in preset:
            value, keys = np.asarray(preset[path]), preset_from
        else:
            found = lookup(path)
            if found is None or found[0] not in source:
                problems.append(f"{name}: no source tensor" + (f" (looked for {found[0]!r})" if found else ""))
                continue
            keys, transform = found
            value = transform(np.asarray(source[keys]))
            used[keys] = used.get(keys, 0) + 1
        if tuple(value.shape) != tuple(leaf.shape):
            problems.append(f"{name}: shape {tuple(leaf.shape)} but source {keys!r} gives {tuple(value.shape)}")
            continue
        out[path] = value.astype(leaf.dtype)
        report.loaded[name] = keys
    report.uses = dict(used)
    problems += [f"source tensor {k!r} used {n} times" for k, n in used.items() if n > 1]
    for k in source:
        if k in used:
            continue
        if k in ignorable:
            report.ignored[k] = ignorable[k]
        else:
            problems.append(f"source tensor {k!r} {tuple(np.shape(source[k]))} is not used by the model")
    if problems:
        _raise_mismatch(report, problems)
    return traverse_util.unflatten_dict(out)
