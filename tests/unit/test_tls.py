import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from supervisor import tls
from supervisor.errors import UserError


def test_generates_ca_and_server_cert(tmp_path):
    pair = tls.ensure_generated(tmp_path, "reg.example.com")
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"reg.example.com", "localhost"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=91)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for key in ("ca.key", "server.key"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600


def test_kept_until_due_then_renewed(tmp_path):
    first = tls.ensure_generated(tmp_path, "localhost")
    assert tls.ensure_generated(tmp_path, "localhost").cert_pem == first.cert_pem
    renewed = tls.ensure_generated(tmp_path, "localhost", renew_before=dt.timedelta(days=365))
    assert renewed.cert_pem != first.cert_pem
    other_name = tls.ensure_generated(tmp_path, "reg.example.com")
    assert other_name.cert_pem != renewed.cert_pem


def _write_pair(tmp_path, pair, name="user"):
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    os.chmod(key, 0o600)
    return cert, key


def test_user_pair_checked(tmp_path):
    pair = tls.ensure_generated(tmp_path / "a", "localhost")
    cert, key = _write_pair(tmp_path, pair)
    assert tls.load_user_pair(cert, key).cert_pem == pair.cert_pem

    other = tls.ensure_generated(tmp_path / "b", "localhost")
    _, other_key = _write_pair(tmp_path, other, "other")
    with pytest.raises(UserError, match="does not match"):
        tls.load_user_pair(cert, other_key)
    with pytest.raises(UserError, match="cannot read"):
        tls.load_user_pair(tmp_path / "missing.crt", key)
    with pytest.raises(UserError, match="not a PEM certificate"):
        tls.load_user_pair(key, key)


def test_expired_user_cert_refused(tmp_path):
    ca_cert, ca_key = tls._ensure_ca(tmp_path)
    pair = tls._issue_server_cert(ca_cert, ca_key, "localhost", dt.timedelta(minutes=-1))
    cert, key = _write_pair(tmp_path, pair)
    with pytest.raises(UserError, match="expired"):
        tls.load_user_pair(cert, key)


def test_keys_are_p256(tmp_path):
    tls.ensure_generated(tmp_path, "localhost")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key((tmp_path / "server.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
