"""Puts the web demo (export/web/) and its TF.js runtime next to an exported model.

TF.js is copied from the npm packages installed in export/node_modules (at build time),
never loaded from a CDN: the page works from `python -m http.server` with no internet.
`finish` then makes it an installable app that works offline: icons, the web app manifest
and the service worker's list of files, versioned by their contents.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil

from PIL import Image, ImageDraw

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
            f"(or `npm ci --prefix {node_dir}`) once, with access to the npm registry; FLOWERS_JAX_NODE_DIR "
            "names that folder (package.json, web/, node_modules/) when it is not this checkout's export/"
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


APP_NAME, SHORT_NAME = "Flower classifier", "Flowers"
THEME, BACKGROUND, PETAL = "#1b4332", "#f4f7f5", "#f6bd60"  # as index.html's theme-color and style.css
ICON_SIZES = (192, 512)
MANIFEST = "manifest.webmanifest"
SERVICE_WORKER = "sw.js"
# What the page needs to run (the service worker caches these); not the ONNX / SavedModel artefacts.
OFFLINE_GLOBS = (
    "index.html",
    "app.js",
    "style.css",
    MANIFEST,
    "icons/*.png",
    "vendor/*",
    "metadata.json",
    "tfjs_model/*",
    "embedding_stats.bin",
)


def draw_icon(size: int) -> Image.Image:
    """A square app icon: a five-petal flower on the theme colour, inside the centre 80% (the
    "maskable" safe zone, so Android's round or squircle crop never cuts it)."""
    image = Image.new("RGB", (size, size), THEME)
    draw = ImageDraw.Draw(image)
    c, petal, ring = size / 2, size * 0.13, size * 0.17
    for k in range(5):
        a = 2 * math.pi * k / 5 - math.pi / 2
        x, y = c + ring * math.cos(a), c + ring * math.sin(a)
        draw.ellipse((x - petal, y - petal, x + petal, y + petal), fill=PETAL)
    draw.ellipse((c - size * 0.08, c - size * 0.08, c + size * 0.08, c + size * 0.08), fill="#e76f51")
    return image


def manifest(metadata: dict) -> dict:
    """The web app manifest: name, icons, standalone display, theme colour; start URL = this folder."""
    n = metadata.get("num_classes") or len(metadata.get("class_names", []))
    return {
        "name": APP_NAME,
        "short_name": SHORT_NAME,
        "description": f"Recognises {n} flower species on the device ({metadata.get('model_name', 'TF.js')}).",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "orientation": "portrait",
        "theme_color": THEME,
        "background_color": BACKGROUND,
        "icons": [
            {"src": f"icons/icon-{s}.png", "sizes": f"{s}x{s}", "type": "image/png", "purpose": "any maskable"}
            for s in ICON_SIZES
        ],
    }


def offline_files(out_dir: pathlib.Path) -> list[str]:
    """The files the service worker caches (relative, sorted), all of which exist."""
    found = {p for pattern in OFFLINE_GLOBS for p in out_dir.glob(pattern) if p.is_file()}
    return sorted(p.relative_to(out_dir).as_posix() for p in found)


def finish(out_dir: str | pathlib.Path) -> str:
    """Writes icons/, manifest.webmanifest and the filled-in sw.js; returns the cache version.

    Call after every other file is in place (metadata.json included): the version is a hash of
    the contents of all the files the service worker caches, so any re-export that changes one
    gives a new version, and the browser replaces the old cache.
    """
    out_dir = pathlib.Path(out_dir)
    (out_dir / "icons").mkdir(exist_ok=True)
    for size in ICON_SIZES:
        draw_icon(size).save(out_dir / "icons" / f"icon-{size}.png", optimize=True)
    meta = json.loads((out_dir / "metadata.json").read_text())
    (out_dir / MANIFEST).write_text(json.dumps(manifest(meta), indent=2) + "\n")
    files = offline_files(out_dir)
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + hashlib.sha256((out_dir / rel).read_bytes()).digest())
    version = digest.hexdigest()[:16]
    template = (pathlib.Path(NODE_DIR) / "web" / SERVICE_WORKER).read_text()
    placeholders = ("const VERSION = 'unversioned';", "const FILES = [];")
    if not all(p in template for p in placeholders):
        raise ValueError(f"{SERVICE_WORKER} template lacks {placeholders}; it was edited wrongly")
    script = template.replace(placeholders[0], f"const VERSION = '{version}';")
    script = script.replace(placeholders[1], f"const FILES = {json.dumps(files)};")
    (out_dir / SERVICE_WORKER).write_text(script)
    return version
