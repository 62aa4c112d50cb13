"""Puts the web demo (export/web/) and its TF.js runtime next to an exported model.

TF.js is copied from the npm packages installed in export/node_modules (at build time),
never loaded from a CDN: the page works from `python -m http.server` with no internet.
"""

from __future__ import annotations

import os
import pathlib
import shutil

# export/ (package.json, node scripts, web/); FLOWERS_JAX_NODE_DIR overrides it for
# installs where the repository checkout is elsewhere.
NODE_DIR = pathlib.Path(os.environ.get("FLOWERS_JAX_NODE_DIR", pathlib.Path(__file__).resolve().parents[2] / "export"))

# (file in node_modules, name under vendor/): the TF.js bundle (core, converter, webgl and
# cpu backends), the wasm backend, and its three binaries (plain, SIMD, SIMD + threads;
# the backend picks one at run time).
VENDOR_FILES = (
    ("@tensorflow/tfjs/dist/tf.min.js", "tf.min.js"),
    ("@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js", "tf-backend-wasm.min.js"),
    ("@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm", "tfjs-backend-wasm.wasm"),
    ("@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-simd.wasm"),
    ("@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm"),
)


def node_modules(node_dir: str | pathlib.Path = NODE_DIR) -> pathlib.Path:
    """export/node_modules, or FileNotFoundError saying how to install it."""
    path = pathlib.Path(node_dir) / "node_modules"
    missing = [src for src, _ in VENDOR_FILES if not (path / src).exists()]
    if missing:
        raise FileNotFoundError(
            f"TF.js npm packages missing under {path} ({missing[0]} ...): run `bash export/install.sh` "
            f"(or `npm ci --prefix {node_dir}`) once, with access to the npm registry"
        )
    return path


def install(out_dir: str | pathlib.Path, *, node_dir: str | pathlib.Path = NODE_DIR) -> list[str]:
    """Copies the page (index.html, app.js, style.css) and vendor/ into `out_dir`; returns the paths written."""
    out_dir = pathlib.Path(out_dir)
    modules = node_modules(node_dir)
    written = []
    for src in sorted((pathlib.Path(node_dir) / "web").iterdir()):
        if src.is_file():
            shutil.copy2(src, out_dir / src.name)
            written.append(src.name)
    (out_dir / "vendor").mkdir(exist_ok=True)
    for src, name in VENDOR_FILES:
        shutil.copy2(modules / src, out_dir / "vendor" / name)
        written.append(f"vendor/{name}")
    return written
