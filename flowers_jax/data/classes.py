"""The 104 class names of Kaggle's "Flower Classification with TPUs", shipped with the package.

`kaggle_104_classes.txt` holds one name per line, index 0 first (copied from the competition's
class list; two trailing spaces of the original list, at 87 and 90, are stripped).
"""

from __future__ import annotations

import functools
import importlib.resources

NUM_CLASSES = 104


@functools.cache
def _names() -> tuple[str, ...]:
    text = importlib.resources.files(__package__).joinpath("kaggle_104_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        raise RuntimeError(
            f"kaggle_104_classes.txt holds {len(names)} names ({len(set(names))} distinct), expected 104"
        )
    return names


def class_names() -> list[str]:
    """The 104 competition class names; index i is class i."""
    return list(_names())


def default_names(num_classes: int) -> list[str]:
    """Names of `num_classes` classes for data that names none: the competition's first
    `num_classes`, then "class_<i>" for i >= 104."""
    return class_names()[:num_classes] + [f"class_{i}" for i in range(NUM_CLASSES, num_classes)]


def normalise_name(name: str) -> str:
    """Case-, space- and punctuation-insensitive key, so "Common_Dandelion" finds "common dandelion"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_index(name: str, names: list[str] | None = None) -> int:
    """Index of a class name in `names` (default: the 104), matched by `normalise_name`.

    Raises:
      KeyError: naming the closest known names, when `name` is unknown.
    """
    names = class_names() if names is None else names
    keys = {normalise_name(n): i for i, n in enumerate(names)}
    key = normalise_name(name)
    if key in keys:
        return keys[key]
    import difflib

    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3)
    raise KeyError(f"unknown class name {name!r}" + (f"; did you mean {close}?" if close else ""))
