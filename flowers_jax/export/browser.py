"""Running the exported web demo in headless Chromium: a local server, a fake-camera video, the driver.

Used by the browser tests and benchmarks/browser_latency.py. The browser is the system's
Debian `chromium` (never a downloaded one), driven by export/browser.mjs (playwright-core).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np

from flowers_jax.export.web import NODE_DIR
from flowers_jax.serve import certs as serve_certs
from flowers_jax.serve import server as serve_server


def chromium_path() -> str | None:
    """The Chromium executable ($CHROMIUM, or chromium on PATH), or None when there is none."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.path.exists(path) else None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:  # cross-origin isolation: lets TF.js's wasm backend use threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


class _IsolatedHandler(_QuietHandler):
    isolated = True


@contextlib.contextmanager
def serve(directory: str | pathlib.Path, *, isolated: bool = False) -> Iterator[str]:
    """Serves `directory` on 127.0.0.1 (a free port) for the duration; yields the base URL.

    By default the same as `python -m http.server`: plain static files, no COOP/COEP
    headers, so the page runs as it will for most users (single-threaded wasm).
    `isolated=True` adds the two headers that enable multi-threaded wasm.
    """
    handler = functools.partial(_IsolatedHandler if isolated else _QuietHandler, directory=str(directory))
    with serve_server.in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"


@contextlib.contextmanager
def serve_https(directory: str | pathlib.Path, cert_dir: str | pathlib.Path) -> Iterator[tuple[str, str]]:
    """Serves `directory` as `python -m flowers_jax.serve` does (HTTPS, isolated) on 127.0.0.1.

    Yields (base URL, the leaf certificate's SPKI hash for run_page(spki=...): a browser given it
    trusts the server as a phone that installed the local CA does). The CA lives in `cert_dir`.
    """
    made = serve_certs.ensure(cert_dir, ["127.0.0.1"])
    tls, ca = serve_server.tls_context(made), serve_certs.ca_der(made)
    srv = serve_server.make_server(directory, host="127.0.0.1", port=0, tls=tls, ca_der=ca, quiet=True)
    with serve_server.in_thread(srv):
        yield f"https://127.0.0.1:{srv.server_port}/", made.leaf_spki_sha256


def write_y4m(path: str | pathlib.Path, rgb: np.ndarray, *, frames: int = 10, fps: int = 30) -> pathlib.Path:
    """Writes a video for Chromium's fake camera (`--use-file-for-fake-video-capture`), which loops it.

    Args:
      rgb: [H, W, 3] uint8 (a still picture), or [N, H, W, 3]: a sequence of pictures (H, W even:
        4:2:0 halves both).
      frames: how many frames each picture lasts.
    The colour conversion is BT.601 with video ("limited") range, the one a browser assumes
    for such a video; the page's pixels therefore differ slightly from `rgb`.
    """
    pictures = rgb[None] if rgb.ndim == 3 else rgb
    h, w = pictures.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 video needs even sides, got {w}x{h}")
    path = pathlib.Path(path)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for picture in pictures:
            planes = _yuv420(picture)
            for _ in range(frames):
                f.write(b"FRAME\n")
                for p in planes:
                    f.write(p)
    return path


def _yuv420(rgb: np.ndarray) -> list[bytes]:
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    return [np.clip(np.round(p), 0, 255).astype(np.uint8).tobytes() for p in (y, sub(u), sub(v))]


_PATH_OPTIONS = ("video", "file", "screenshot", "profile", "steps", "init_script")


def run_page(mode: str, url: str, *, timeout_s: float = 180, **options: str | int | bool) -> dict:
    """Runs export/browser.mjs in `mode` (camera | upload | page | bench | steps) and returns its JSON.

    options: video=..., file=..., screenshot=..., frames=..., deny_camera=True, cores=N, spki=...,
    ignore_https_errors=True, profile=DIR, wait_offline=True, viewport="390x844", steps=FILE,
    init_script=FILE (see export/browser.mjs).
    """
    chromium = chromium_path()
    if chromium is None:
        raise FileNotFoundError("no Chromium: apt-get install chromium (Debian), or set $CHROMIUM")
    cmd = ["node", str(NODE_DIR / "browser.mjs"), mode, "--url", url, "--chromium", chromium]
    cmd += ["--timeout", str(int(timeout_s * 1000))]
    for key, value in options.items():
        if key in _PATH_OPTIONS:  # node runs in export/: relative paths would land there
            value = pathlib.Path(value).resolve()
        flag = f"--{key.replace('_', '-')}"
        cmd += [flag] if value is True else [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60, cwd=NODE_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"browser run failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_steps(url: str, steps: list[dict], workdir: str | pathlib.Path, **options: str | int | bool) -> dict:
    """One scripted visit (export/browser.mjs steps mode) in one browser launch: `steps` such as
    {"click": "#add-species"}, {"fill": "#add-name", "value": "x"}, {"files": "#add-files", "paths": [...]},
    {"wait": "js expression"}, {"reload": True}, {"goto": url}, {"snapshot": True, "label": "name"},
    {"eval": "js"}, {"screenshot": path}. Returns {label: what the step reported} (snapshots, evals)
    and the page's console lines under "console". Paths in steps must be absolute."""
    path = pathlib.Path(workdir) / "steps.json"
    path.write_text(json.dumps(steps))
    out = run_page("steps", url, steps=path, **options)
    results = dict(out["results"])
    if len(results) != len(out["results"]):
        raise ValueError("two steps report under one label; give each a distinct label")
    return results | {"console": out["console"]}


def snapshot_pixels(snapshot: dict, pixels: str | None = None) -> np.ndarray:
    """The [size, size, 3] float32 RGB input the page fed its model, from a snapshot (`pixels`: another
    base64 RGB picture of it, e.g. one of snapshot["lastShots"])."""
    size = snapshot["size"]
    raw = np.frombuffer(base64.b64decode(pixels or snapshot["pixels"]), np.uint8)
    return raw.reshape(size, size, 3).astype(np.float32)
