"""A small local certificate authority and the server's certificate for the LAN addresses.

A phone opens the page at https://<lan-address>:<port>/, so the certificate names that IP
address (an IP-address SAN entry; browsers ignore the subject's common name) and localhost.
What Android Chrome and iOS accept from a CA the user installed (docs/design.md, §browser): P-256
ECDSA with SHA-256, extendedKeyUsage serverAuth, a CA with basicConstraints CA:TRUE, and a leaf
valid 365 days (under the 398 days Apple and Chrome allow public certificates, the strictest rule).
The files live outside the export folder (default ~/.config/flowers_jax/serve/) so that no
key is ever served, and are reused: the CA for years (a phone trusts it once), the leaf
until it nears expiry or the machine's addresses change.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import os
import pathlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ENV_DIR = "FLOWERS_JAX_SERVE_DIR"
CA_DAYS = 3650
LEAF_DAYS = 365  # <= 397: what browsers allow a publicly trusted leaf
RENEW_DAYS = 30  # a leaf with less left than this is replaced
CA_NAME = "flowers_jax local CA"


class CertificateError(RuntimeError):
    """The certificate folder cannot be used (unreadable, a broken CA file, ...)."""


@dataclasses.dataclass(frozen=True)
class Certificates:
    """The files `ensure` made or found, and what the command prints about them."""

    folder: pathlib.Path
    ca_cert: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path
    ca_fingerprint: str  # SHA-256 of the CA certificate, AB:CD:... (what a phone shows)
    leaf_spki_sha256: str  # base64 SHA-256 of the leaf's public key (Chromium's SPKI pin format)
    new_ca: bool
    new_leaf: bool


def default_dir() -> pathlib.Path:
    """$FLOWERS_JAX_SERVE_DIR, else $XDG_CONFIG_HOME/flowers_jax/serve, else ~/.config/flowers_jax/serve."""
    if os.environ.get(ENV_DIR):
        return pathlib.Path(os.environ[ENV_DIR]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(config) / "flowers_jax" / "serve"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated hex pairs."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def spki_sha256(cert: x509.Certificate) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), as Chromium's --ignore-certificate-errors-spki-list takes it."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Writes a key readable by its owner only (created 0600, never world-readable for a moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime.datetime, days: int):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a phone's clock may run a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that may sign server certificates only (pathlen 0), valid CA_DAYS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
    cert = (
        _builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ips: list[str], now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for `ips` and localhost, signed by the CA, valid LEAF_DAYS."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)  # digitalSignature
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowers_jax serve")]),
            ca_cert.subject,
            key.public_key(),
            now,
            LEAF_DAYS,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _leaf_ips(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def leaf_usable(leaf: x509.Certificate, ca_cert: x509.Certificate, ips: list[str], now: datetime.datetime) -> bool:
    """True when `leaf` was signed by this CA, names every one of `ips` and has > RENEW_DAYS left."""
    try:
        leaf.verify_directly_issued_by(ca_cert)
        names = _leaf_ips(leaf)
    except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return set(ips) <= names and leaf.not_valid_after_utc - now > datetime.timedelta(days=RENEW_DAYS)


def _load_ca(folder: pathlib.Path, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    ca_cert_path, ca_key_path = folder / "ca.crt", folder / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        except (ValueError, OSError) as e:
            raise CertificateError(
                f"cannot read the local CA in {folder} ({e}); delete ca.crt and ca.key there to make a new one "
                "(phones that trusted the old one must then install the new one)"
            ) from e
        if ca_cert.not_valid_after_utc - now > datetime.timedelta(days=LEAF_DAYS):
            return ca_key, ca_cert, False
    ca_key, ca_cert = make_ca(now)
    _write_private(ca_key_path, _key_pem(ca_key))
    ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_key, ca_cert, True


def _load_leaf(cert_path: pathlib.Path, key_path: pathlib.Path) -> x509.Certificate | None:
    """The stored server certificate, or None when it is missing, unreadable or not its key's."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return leaf if key.public_key() == leaf.public_key() else None


def ensure(folder: str | os.PathLike | None, ips: list[str], *, now: datetime.datetime | None = None) -> Certificates:
    """The CA and a server certificate for `ips` + localhost in `folder` (default_dir()), made when needed.

    The CA is reused while it has more than a leaf's lifetime left; the leaf while `leaf_usable`.
    """
    folder = pathlib.Path(folder).expanduser() if folder else default_dir()
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise CertificateError(
            f"cannot create the certificate folder {folder} ({e}); choose another with --cert-dir or ${ENV_DIR}"
        ) from e
    ca_key, ca_cert, new_ca = _load_ca(folder, now)
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    leaf = _load_leaf(cert_path, key_path) if not new_ca else None
    new_leaf = leaf is None or not leaf_usable(leaf, ca_cert, ips, now)
    if new_leaf:
        key, leaf = make_leaf(ca_key, ca_cert, ips, now)
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return Certificates(
        folder=folder,
        ca_cert=folder / "ca.crt",
        cert=cert_path,
        key=key_path,
        ca_fingerprint=fingerprint(ca_cert),
        leaf_spki_sha256=spki_sha256(leaf),
        new_ca=new_ca,
        new_leaf=new_leaf,
    )


def ca_der(certs: Certificates) -> bytes:
    """The CA certificate in DER (what Android's and iOS's certificate installers take as .crt)."""
    return x509.load_pem_x509_certificate(certs.ca_cert.read_bytes()).public_bytes(serialization.Encoding.DER)
