"""TLS material for the proxy: a local CA and a short-lived server certificate, or the user's pair."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from supervisor.const import CA_CERT_FILE
from supervisor.errors import UserError
from supervisor.fsutil import atomic_write

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 90
RENEW_BEFORE_DAYS = 30
CA_CERT = CA_CERT_FILE
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"


@dataclass(frozen=True)
class ServerPair:
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(server_name: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for dns in dict.fromkeys([server_name, "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(dns)))
        except ValueError:
            names.append(x509.DNSName(dns))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return names


def _ensure_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = tls_dir / CA_CERT, tls_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), ca_key
    ca_key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regsupervisor local CA")])
    now = _now()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(key_path, _key_pem(ca_key), mode=0o600)
    atomic_write(cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return ca_cert, ca_key


def _issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    server_name: str,
    valid_for: dt.timedelta,
) -> ServerPair:
    key = _new_key()
    now = _now()
    not_after = now + valid_for
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_sans(server_name)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ServerPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), not_after)


def _still_good(
    cert: x509.Certificate, ca_cert: x509.Certificate, server_name: str, renew_before: dt.timedelta
) -> bool:
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - _now() < renew_before:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(sans) == set(_sans(server_name))


def ensure_generated(
    tls_dir: Path,
    server_name: str,
    valid_for: dt.timedelta = dt.timedelta(days=SERVER_VALID_DAYS),
    renew_before: dt.timedelta = dt.timedelta(days=RENEW_BEFORE_DAYS),
) -> ServerPair:
    """Keep a local CA and a server certificate for server_name under tls_dir; renew when due."""
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(tls_dir)
    cert_path, key_path = tls_dir / SERVER_CERT, tls_dir / SERVER_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _still_good(cert, ca_cert, server_name, renew_before):
            return ServerPair(cert_path.read_bytes(), key_path.read_bytes(), cert.not_valid_after_utc)
    pair = _issue_server_cert(ca_cert, ca_key, server_name, valid_for)
    atomic_write(key_path, pair.key_pem, mode=0o600)
    atomic_write(cert_path, pair.cert_pem, mode=0o644)
    return pair


def load_user_pair(cert_path: Path, key_path: Path) -> ServerPair:
    """Load and check the user's certificate and key: readable, matching, not expired."""
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as exc:
        raise UserError(f"tls.cert {cert_path}: cannot read: {exc.strerror}") from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise UserError(f"tls.key {key_path}: cannot read: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise UserError(f"tls.cert {cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise UserError(f"tls.key {key_path}: not an unencrypted PEM private key") from None
    leaf = certs[0]
    if leaf.public_key() != key.public_key():
        raise UserError(f"tls.key {key_path} does not match the certificate in tls.cert {cert_path}")
    if leaf.not_valid_after_utc <= _now():
        raise UserError(f"tls.cert {cert_path}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return ServerPair(cert_pem, key_pem, leaf.not_valid_after_utc)
