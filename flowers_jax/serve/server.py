"""The static server for an export folder: that folder only, cross-origin isolated, over TLS.

Built on the standard library's `http.server` (ThreadingHTTPServer + `ssl`). Only the mapping of
a request path to a file is written here (`resolve`): SimpleHTTPRequestHandler's translate_path
drops `..` segments silently, follows symlinks out of the folder and lists directories, and
this server is reachable by every device on the network.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.server
import json
import os
import pathlib
import socket
import socketserver
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, TypeVar

from flowers_jax.serve.certs import Certificates

S = TypeVar("S", bound=socketserver.BaseServer)
CA_PATH = "/flowers-jax-ca.crt"  # the CA certificate (DER), for a phone to install; never the key
EXPORT_COMMAND = "python export/export_model.py --workdir WORKDIR --out FOLDER"

# Browsers check these (TF.js fetches the wasm with instantiateStreaming, which needs
# application/wasm; the manifest and module scripts are refused under a wrong type).
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".crt": "application/x-x509-ca-cert",
}

# Cross-origin isolation (COOP + COEP) gives the page SharedArrayBuffer, which TF.js's threaded
# wasm needs; CORP keeps the files from being embedded by other sites' pages.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # Revalidate every time: a re-export reuses file names (metadata.json, sw.js, the weight shards),
    # and a browser's heuristic cache would otherwise mix an old model with new metadata.
    "Cache-Control": "no-cache",
}


class ServeError(RuntimeError):
    """The server cannot start; the message says what to do."""


def check_export(folder: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of the export in `folder`, or ServeError saying why it is not one."""
    root = pathlib.Path(folder).expanduser()
    if not root.exists():
        raise ServeError(f"{root} does not exist; make an export there with: {EXPORT_COMMAND}")
    if not root.is_dir():
        raise ServeError(f"{root} is a file; give the export folder (the one holding metadata.json)")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ServeError(f"{root} is not readable by this user; fix its permissions (chmod u+rx) or serve a copy")
    missing = [rel for rel in ("metadata.json", "index.html", "tfjs_model/model.json") if not (root / rel).is_file()]
    if missing:
        raise ServeError(f"{root} is not an export folder (no {', '.join(missing)}); make one with: {EXPORT_COMMAND}")
    try:
        return json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise ServeError(f"{root / 'metadata.json'} cannot be read ({e}); export again with: {EXPORT_COMMAND}") from e


def resolve(root: pathlib.Path, target: str) -> pathlib.Path | None:
    """The file under `root` (already resolved) that request-target `target` names, or None (-> 404).

    None for: anything but an origin-form path ("/..."), `.` / `..` / hidden segments (also when
    percent-encoded), backslashes and NULs, a directory other than the root (no listings), and a
    path that leaves `root` after symlinks are followed.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    decoded = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    if "\\" in decoded or "\0" in decoded:
        return None
    parts = [p for p in decoded.split("/") if p]
    if any(p.startswith(".") for p in parts):  # "..", ".", ".flowers_jax_export", ...
        return None
    candidate = root.joinpath(*parts) if parts else root / "index.html"
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


class Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the export folder's files; every other method gets 405."""

    server_version = "flowers_jax"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: one TLS handshake for the page's ~20 files
    timeout = 60  # an idle phone connection does not hold a thread forever
    root: pathlib.Path
    ca_der: bytes | None
    quiet: bool

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        if self.ca_der is not None and self.path.split("?", 1)[0] == CA_PATH:
            return self._send(200, self.ca_der, MIME_TYPES[".crt"], body=body)
        try:
            path = resolve(self.root, self.path)
        except UnicodeDecodeError:
            path = None
        if path is None:
            return self._send(404, b"Not found\n", "text/plain; charset=utf-8", body=body)
        try:
            data, mtime = path.read_bytes(), path.stat().st_mtime
        except OSError:
            return self._send(404, b"Not found\n", "text/plain; charset=utf-8", body=body)
        modified = email.utils.formatdate(mtime, usegmt=True)
        if self.headers.get("If-Modified-Since") == modified:
            return self._send(304, b"", None, body=False, modified=modified)
        mime = MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")
        self._send(200, data, mime, body=body, modified=modified)

    def _send(self, code: int, data: bytes, mime: str | None, *, body: bool, modified: str | None = None) -> None:
        self.send_response(code)
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        if mime:
            self.send_header("Content-Type", mime)
        if modified:
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(len(data)) if code != 304 else "0")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that does each TLS handshake in the connection's own thread."""

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS look-up: none here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        if self.tls is None:
            return super().finish_request(request, client_address)
        try:
            request.settimeout(Handler.timeout)
            tls_socket = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return None  # e.g. the phone refused the certificate; it says so to its user
        with tls_socket:  # socketserver closes only the plain socket, which wrap_socket detached
            super().finish_request(tls_socket, client_address)
        return None

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError):
            super().handle_error(request, client_address)


def tls_context(certs: Certificates) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) with the certificate from `certs`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs.cert, certs.key)
    return context


def make_server(
    folder: str | os.PathLike,
    *,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    ca_der: bytes | None = None,
    quiet: bool = False,
) -> Server:
    """A bound (not yet serving) server for the export in `folder`; ServeError when it cannot bind.

    Args:
      folder: an export folder (`check_export` is the caller's job).
      host, port: where to listen; port 0 picks a free one (server.server_port).
      tls: a context from `tls_context` for HTTPS; None serves plain HTTP.
      ca_der: the CA certificate, served at CA_PATH (HTTPS only).
      quiet: no request log on stderr.
    """
    root = pathlib.Path(folder).expanduser().resolve()
    handler = type("ExportHandler", (Handler,), {"root": root, "ca_der": ca_der, "quiet": quiet})
    try:
        server = Server((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is in use (another server?); choose one with --port") from e
        if e.errno == errno.EACCES:
            raise ServeError(f"no permission to listen on port {port}; use a port above 1023 (--port 8443)") from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"{host} is not an address of this machine; give one of its own with --host") from e
        raise ServeError(f"cannot listen on {host}:{port}: {e}") from e
    server.tls = tls
    return server


@contextlib.contextmanager
def in_thread(srv: S) -> Iterator[S]:
    """Serves `srv` in a background thread while the block runs, then stops and closes it (the port is free)."""
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
