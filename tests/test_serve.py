"""`python -m flowers_jax.serve`: certificates, headers, MIME types, and what it refuses to serve.

No browser and no model here (a stand-in export folder of small files): the page in Chromium over
the served HTTPS is in tests/test_serve_browser.py.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from flowers_jax.serve import __main__ as cli
from flowers_jax.serve import certs, server

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = {
    "index.html": b"<!doctype html><title>page</title>",
    "app.js": b"'use strict';",
    "sw.js": b"// service worker",
    "manifest.webmanifest": b"{}",
    "metadata.json": b'{"model_name": "mobilenet_v2_035", "num_classes": 8}',
    "tfjs_model/model.json": b"{}",
    "tfjs_model/group1-shard1of1.bin": b"\0" * 64,
    "vendor/tfjs-backend-wasm-threaded-simd.wasm": b"\0asm",
    "icons/icon-192.png": b"\x89PNG",
    ".flowers_jax_export": b"marker",
}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> pathlib.Path:
    tmp_path = tmp_path_factory.mktemp("serve")
    root = tmp_path / "export"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (tmp_path / "secret.txt").write_text("outside the export")
    (root / "link_out").symlink_to(tmp_path / "secret.txt")
    (root / "dir_out").symlink_to(tmp_path, target_is_directory=True)
    (root / "link_in.json").symlink_to(root / "metadata.json")
    return root


@pytest.fixture(scope="module")
def https(export_dir, tmp_path_factory):
    """A running HTTPS server on the export (port 0), and a client TLS context trusting its CA."""
    cert = certs.ensure(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])
    srv = server.make_server(
        export_dir, host="127.0.0.1", port=0, tls=server.tls_context(cert), ca_der=certs.ca_der(cert), quiet=True
    )
    with server.in_thread(srv):
        client = ssl.create_default_context(cafile=str(cert.ca_cert))
        yield srv.server_port, client, cert


def _request(port: int, context: ssl.SSLContext, target: str, method: str = "GET") -> http.client.HTTPResponse:
    # http.client sends the target as given (no normalisation of "..", "%2e"): what an attacker sends.
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    conn.request(method, target)
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def test_certificates_are_what_phones_accept(tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    made = certs.ensure(tmp_path, ["192.168.1.23", "127.0.0.1"], now=now)
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(made.cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    for cert in (ca, leaf):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.23"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=397)
    assert made.ca_fingerprint == ca.fingerprint(hashes.SHA256()).hex(":").upper() and len(made.ca_fingerprint) == 95
    assert (made.folder / "ca.key").stat().st_mode & 0o077 == 0 and made.key.stat().st_mode & 0o077 == 0
    assert made.new_ca and made.new_leaf


def test_certificates_are_reused_and_renewed(tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    first = certs.ensure(tmp_path, ["192.168.1.23"], now=now)
    again = certs.ensure(tmp_path, ["192.168.1.23"], now=now + datetime.timedelta(days=1))
    assert not again.new_ca and not again.new_leaf and again.leaf_spki_sha256 == first.leaf_spki_sha256
    moved = certs.ensure(tmp_path, ["10.0.0.7"], now=now + datetime.timedelta(days=2))  # another Wi-Fi
    assert not moved.new_ca and moved.new_leaf and moved.ca_fingerprint == first.ca_fingerprint
    late = certs.ensure(tmp_path, ["10.0.0.7"], now=now + datetime.timedelta(days=certs.LEAF_DAYS - 10))
    assert late.new_leaf and not late.new_ca
    assert late.ca_fingerprint == first.ca_fingerprint  # the phone keeps trusting the same CA


def test_headers_and_mime_types(https):
    port, client, _ = https
    expected = {
        "/": "text/html; charset=utf-8",
        "/app.js": "text/javascript; charset=utf-8",
        "/metadata.json": "application/json",
        "/manifest.webmanifest": "application/manifest+json",
        "/tfjs_model/group1-shard1of1.bin": "application/octet-stream",
        "/vendor/tfjs-backend-wasm-threaded-simd.wasm": "application/wasm",
        "/icons/icon-192.png": "image/png",
        "/sw.js": "text/javascript; charset=utf-8",
    }
    for target, mime in expected.items():
        r = _request(port, client, target)
        assert r.status == 200 and r.getheader("Content-Type") == mime, (target, r.status, r.getheaders())
        assert r.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        assert r.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        assert r.getheader("Cross-Origin-Resource-Policy") == "same-origin"
        assert r.getheader("Cache-Control") == "no-cache", target
    assert _request(port, client, "/").body == FILES["index.html"]
    head = _request(port, client, "/metadata.json", "HEAD")
    assert (
        head.status == 200 and head.body == b"" and int(head.getheader("Content-Length")) == len(FILES["metadata.json"])
    )


def test_ca_certificate_downloadable_and_no_key(https):
    port, client, cert = https
    r = _request(port, client, server.CA_PATH)
    assert r.status == 200 and r.getheader("Content-Type") == "application/x-x509-ca-cert"
    assert x509.load_der_x509_certificate(r.body) == x509.load_pem_x509_certificate(cert.ca_cert.read_bytes())
    for target in ("/ca.key", "/server.key", "/certs/ca.key"):
        assert _request(port, client, target).status == 404


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/tfjs_model/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "/etc/passwd",
        "/link_out",
        "/dir_out/secret.txt",
        "/tfjs_model/",
        "/tfjs_model",
        "/.flowers_jax_export",
        "/%00metadata.json",
        "/%ff%fe",
        "http://localhost/../secret.txt",
        "*",
    ],
)
def test_nothing_outside_the_folder(https, target):
    port, client, _ = https
    r = _request(port, client, target)
    assert r.status == 404, (target, r.status)
    assert b"outside the export" not in r.body and b"root:" not in r.body and b"<a href" not in r.body


def test_symlink_inside_is_served(https):
    port, client, _ = https
    r = _request(port, client, "/link_in.json?v=1")
    assert r.status == 200 and r.body == FILES["metadata.json"]


def test_only_get_and_head(https):
    port, client, _ = https
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"):
        r = _request(port, client, "/index.html", method)
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD", method
    assert _request(port, client, "/index.html").status == 200  # the connection's server still answers


def test_not_an_export_and_unreadable(tmp_path, monkeypatch):
    with pytest.raises(server.ServeError, match="does not exist.*export/export_model.py"):
        server.check_export(tmp_path / "nope")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "index.html").write_text("hi")
    with pytest.raises(server.ServeError, match=r"not an export folder \(no metadata.json, tfjs_model/model.json\)"):
        server.check_export(tmp_path / "photos")
    (tmp_path / "file").write_text("x")
    with pytest.raises(server.ServeError, match="is a file"):
        server.check_export(tmp_path / "file")
    monkeypatch.setattr(server.os, "access", lambda *a: False)  # tests run as root, who reads everything
    with pytest.raises(server.ServeError, match="not readable by this user"):
        server.check_export(tmp_path / "photos")


def test_port_in_use(export_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(server.ServeError, match=f"port {port} on 127.0.0.1 is in use.*--port"):
            server.make_server(export_dir, host="127.0.0.1", port=port)


def test_cli_refusals(export_dir, tmp_path, capsys):
    assert cli.main([str(export_dir), "--http", "--host", "0.0.0.0"]) == 2
    assert "--http serves this machine only" in capsys.readouterr().err
    assert cli.main([str(export_dir), "--cert-dir", str(export_dir / "certs"), "--port", "0"]) == 2
    assert "inside the served folder" in capsys.readouterr().err and not (export_dir / "certs").exists()
    assert cli.main([str(tmp_path), "--cert-dir", str(tmp_path / "c")]) == 2
    assert "python export/export_model.py" in capsys.readouterr().err


def test_qr_is_a_full_qr_code():
    import segno

    url = "https://192.168.1.23:8443/"
    assert not segno.make_qr(url).is_micro
    text = cli.qr_text(url)
    assert text.count("\n") >= 15 and "█" in text


def test_serve_command_prints_url_qr_fingerprint(export_dir, tmp_path):
    """The documented command from a shell: URL, QR code, fingerprint, isolation headers, traversal refused."""
    env = {**os.environ, certs.ENV_DIR: str(tmp_path / "certs"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flowers_jax.serve", str(export_dir), "--port", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("Ctrl+C")):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        out = "\n".join(lines)
        assert lines and lines[-1].startswith("Ctrl+C"), out + proc.stderr.read()
        urls = [line.strip() for line in lines if line.strip().startswith("https://")]
        assert urls and urls[-1].startswith("https://localhost:"), out
        assert "█" in out and "SHA-256 fingerprint" in out and "not private" in out
        cert = certs.ensure(tmp_path / "certs", ["127.0.0.1"])  # the same CA, found again
        assert cert.ca_fingerprint in out and not cert.new_ca
        port = int(urls[-1].rsplit(":", 1)[1].strip("/"))
        client = ssl.create_default_context(cafile=str(cert.ca_cert))
        r = _request(port, client, "/")
        assert r.status == 200 and r.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        assert _request(port, client, "/%2e%2e/secret.txt").status == 404
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_bad_port_is_a_usage_error(export_dir, capsys):
    for bad in ("70000", "abc", "-1"):
        with pytest.raises(SystemExit) as stop:
            cli.parse_args([str(export_dir), "--port", bad])
        assert stop.value.code == 2 and f"{bad} is not a port" in capsys.readouterr().err
