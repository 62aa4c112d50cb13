"""`python export/export_model.py ...`, the documented export command: `flowers_jax/export/cli.py`
(also `python -m flowers_jax.export.cli`) holds it; `--help` lists the flags."""

import sys

from flowers_jax.export import cli

if __name__ == "__main__":
    sys.exit(cli.main())
