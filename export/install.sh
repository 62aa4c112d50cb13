#!/usr/bin/env bash
# Installs the export toolchain that pyproject cannot express: run once after
# `pip install -e '.[export]'` (which brings tf2onnx, onnx, onnxruntime).
#   bash export/install.sh                 # uses .venv/bin/python; PYTHON=... to choose another
# Needs PyPI and the npm registry; Chromium (for the browser tests) comes from apt: apt-get install chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

# tensorflowjs 4.22.0 (its last release) requires TF 2.19 and tensorflow-decision-forests, which
# cannot install beside TF 2.21 (protobuf clash; docs/design.md, §export). Its converter needs neither at run
# time, so it goes in without its dependencies; flowers_jax/export/tfjs.py stands in for TF-DF.
"$PYTHON" -m pip install -q --no-deps tensorflowjs==4.22.0 tf-keras==2.21.0 tensorflow-hub==0.16.1 importlib_resources==7.1.0

# TF.js (page + Node parity check) and playwright-core (drives the system Chromium), from the lock file.
npm ci --prefix export --no-audit --no-fund --loglevel=error
