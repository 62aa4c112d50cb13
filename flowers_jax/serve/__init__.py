"""Serving an export folder to a phone on the LAN: HTTPS with a local CA, cross-origin isolation.

    python -m flowers_jax.serve out/lite0            # https://<lan-address>:8443/ + a QR code
    python -m flowers_jax.serve out/lite0 --http     # http://127.0.0.1:8000/ (adb reverse, a desktop)

Modules: `addresses` (which LAN addresses to name), `certs` (the local certificate authority and
the server's certificate, kept outside the export folder and reused), `server` (the static file
server: only the export folder, COOP/COEP headers, MIME types), `__main__` (the command line).
docs/design.md §browser says why each header and the trusted certificate matter.
"""
