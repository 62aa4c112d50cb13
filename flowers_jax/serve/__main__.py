"""python -m flowers_jax.serve OUT_DIR [--port 8443] [--host 0.0.0.0] [--http] [--cert-dir DIR]

Serves an export folder to a phone on the same network over HTTPS (a local CA and certificate,
made on first use and reused), cross-origin isolated so TF.js's wasm runs multi-threaded.
Prints the URL(s), a QR code of the first and the CA's fingerprint. Nothing leaves the LAN.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
from collections.abc import Sequence

from flowers_jax.serve import addresses, certs, server

HTTPS_PORT, HTTP_PORT = 8443, 8000


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0: any free one)")
    return port


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m flowers_jax.serve", description=__doc__.split("\n\n")[1])
    p.add_argument("out_dir", help="an export folder (python export/export_model.py ... --out OUT_DIR)")
    p.add_argument(
        "--port", type=_port, default=None, help=f"port (default {HTTPS_PORT}; {HTTP_PORT} with --http; 0: any)"
    )
    p.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0; 127.0.0.1 with --http)")
    p.add_argument("--http", action="store_true", help="plain HTTP on localhost only (adb reverse, a desktop browser)")
    p.add_argument(
        "--cert-dir",
        default=None,
        help=f"where the CA and certificate live (default ${certs.ENV_DIR} or ~/.config/flowers_jax/serve)",
    )
    p.add_argument("--quiet", action="store_true", help="no request log")
    return p.parse_args(argv)


def _certificates(args: argparse.Namespace, root: pathlib.Path) -> certs.Certificates:
    folder = pathlib.Path(args.cert_dir).expanduser() if args.cert_dir else certs.default_dir()
    if folder.resolve().is_relative_to(root.resolve()):
        raise server.ServeError(
            f"the certificate folder {folder} is inside the served folder; its keys would be "
            "downloadable. Choose one outside it with --cert-dir"
        )
    ips = [h for h in addresses.url_hosts(args.host or "0.0.0.0") if h != "localhost"]
    return certs.ensure(folder, list(dict.fromkeys([*ips, "127.0.0.1"])))


def qr_text(url: str) -> str:
    """A QR code of `url` for the terminal: a full QR (a phone camera may not read a Micro QR)."""
    import segno

    out = io.StringIO()
    segno.make_qr(url).terminal(out=out, compact=True)
    return out.getvalue()


def banner(urls: list[str], meta: dict, cert: certs.Certificates | None) -> str:
    """What the command prints before serving."""
    species = f"{meta.get('model_name', '?')}, {meta.get('num_classes', len(meta.get('class_names', [])))} species"
    lines = [f"Serving the export ({species}) at:", *(f"  {u}" for u in urls)]
    if cert is None:
        lines += ["Plain HTTP on this machine only: a phone reaches it with `adb reverse tcp:PORT tcp:PORT`."]
        return "\n".join(lines)
    lines += [
        "",
        qr_text(urls[0]),
        f"Local certificate authority: {cert.ca_cert}" + (" (made now)" if cert.new_ca else ""),
        f"  SHA-256 fingerprint {cert.ca_fingerprint}",
        f"  to trust it on a phone (installable, offline app): open {urls[0].rstrip('/')}{server.CA_PATH} "
        "(README, 'The demo on a phone')",
        "The first time, the phone's browser warns that the connection is not private unless this CA is installed "
        "on it: accept the warning and the camera works; installing and offline use need the CA.",
    ]
    return "\n".join(lines)


def _open(args: argparse.Namespace) -> tuple[server.Server, list[str], dict, certs.Certificates | None]:
    root = pathlib.Path(args.out_dir).expanduser()
    meta = server.check_export(root)
    if args.http:
        host = args.host or "127.0.0.1"
        if not addresses.is_loopback(host):
            raise server.ServeError(
                f"--http serves this machine only (127.0.0.1), not {host}: a phone on the LAN needs HTTPS "
                "for its camera. Drop --http to serve the LAN over HTTPS, or keep 127.0.0.1 and use adb reverse"
            )
        srv = server.make_server(root, host=host, port=HTTP_PORT if args.port is None else args.port, quiet=args.quiet)
        return srv, [f"http://{host}:{srv.server_port}/"], meta, None
    host = args.host or "0.0.0.0"
    cert = _certificates(args, root)
    srv = server.make_server(
        root,
        host=host,
        port=HTTPS_PORT if args.port is None else args.port,
        tls=server.tls_context(cert),
        ca_der=certs.ca_der(cert),
        quiet=args.quiet,
    )
    return srv, [f"https://{h}:{srv.server_port}/" for h in addresses.url_hosts(host)], meta, cert


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until Ctrl+C; 2 with a message when it cannot start."""
    args = parse_args(argv)
    try:
        srv, urls, meta, cert = _open(args)
    except (server.ServeError, certs.CertificateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(banner(urls, meta, cert), flush=True)
    print("Ctrl+C stops the server.", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
