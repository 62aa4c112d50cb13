"""Entry point: `python -m flowers_jax.main --config configs/X.py --workdir W [--mode M]`.

Kept short on purpose (as flax's examples/imagenet): it parses flags and hands
the config to the function of the mode.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from flowers_jax import describe

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where this run keeps its outputs.")
_MODE = flags.DEFINE_enum("mode", "describe", ["describe"], "What to do with the config.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("flowers_jax").setLevel(logging.INFO)
    if _MODE.value == "describe":
        describe.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
