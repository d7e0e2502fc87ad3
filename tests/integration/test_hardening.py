"""Issue 6 (part): least privilege, request hygiene, brute-force limiting, no secrets in output."""

from __future__ import annotations

import socket
import ssl
import stat
import time

AUTH = ("admin", "Sup3r-secret-pw")


def test_containers_run_with_least_privilege(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    for service, caps in (("registry", None), ("nginx", {"NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN"})):
        host = stack.container(service)["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert set(host["CapAdd"] or []) == (caps or set())
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["ReadonlyRootfs"] is True
        assert host["PidsLimit"] == 256
    assert stack.container("registry")["HostConfig"]["PortBindings"] in ({}, None)
    assert stack.serving(AUTH)


def test_state_dir_modes(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    state = stack.state_dir

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(state) == 0o700 and mode(state / "tls") == 0o700
    assert mode(state / "nginx") == 0o750
    for secret in ("http_secret", "tls/ca.key", "tls/server.key", "nginx/server.key"):
        assert mode(state / secret) == 0o600, secret
    assert mode(state / "nginx" / "htpasswd") == 0o640


def test_request_hygiene(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    for path in ("/", "/index.html", "/v1/_ping", "/debug/vars", "/registry-health"):
        assert stack.get(path).status_code == 404, path
    for path in ("/v2/", "/v2/_catalog", "/v2/x/manifests/latest"):
        response = stack.get(path)
        assert response.status_code == 401, path
        assert response.raw.headers.getlist("WWW-Authenticate") == ['Basic realm="Registry"']
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert "max-age" in response.headers["Strict-Transport-Security"]
    assert stack.get(headers={"User-Agent": "Go 1.1 package http"}).status_code == 404
    huge = stack.get(auth=AUTH, headers={"X-Filler": "a" * 40000})
    assert huge.status_code in (400, 494)


def test_slow_clients_do_not_starve_others(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    context = ssl.create_default_context(cafile=stack.ca)
    slow = []
    try:
        for _ in range(50):
            raw = socket.create_connection(("127.0.0.1", stack.listen_port), timeout=5)
            conn = context.wrap_socket(raw, server_hostname="localhost")
            conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n")  # and never finish
            slow.append(conn)
        started = time.monotonic()
        assert stack.get(auth=AUTH).status_code == 200
        assert time.monotonic() - started < 2
    finally:
        for conn in slow:
            conn.close()


def test_brute_force_is_rate_limited(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    # a new connection per attempt, as a password-guessing script would make
    codes = [stack.get(auth=("admin", f"guess{i}")).status_code for i in range(60)]
    assert codes[0] == 401 and 429 in codes, codes
    assert codes.count(401) <= 25
    # the right password is not limited
    assert stack.get(auth=AUTH).status_code == 200


def test_no_secret_in_logs_status_or_check_config(stack):
    stack.add_user(*AUTH)
    stack.start_daemon()
    assert stack.serving(AUTH)
    stack.stop_daemon()
    secrets = [
        AUTH[1],
        (stack.state_dir / "http_secret").read_text().strip(),
        (stack.state_dir / "nginx" / "htpasswd").read_text().split(":", 1)[1].strip(),
    ]
    key_lines = [
        line
        for name in ("tls/server.key", "tls/ca.key")
        for line in (stack.state_dir / name).read_text().splitlines()
        if "PRIVATE KEY" not in line
    ]
    outputs = [
        stack.log(),
        stack.cli("status", "--json").stdout,
        stack.cli("status").stdout,
        stack.cli("check-config").stdout,
        stack.cli("user", "list").stdout,
    ]
    for text in outputs:
        for secret in secrets + key_lines:
            assert secret not in text


def _served_certificate(port: int) -> bytes:
    import ssl as _ssl

    context = _ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = _ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as conn:
        return conn.getpeercert(binary_form=True)


def test_certificate_renewed_in_place_during_a_download(make_stack):
    import hashlib
    import os

    from tests.integration.registry_client import push_blob, session_for

    # a ~100 s certificate renewed when fewer than ~86 s remain: ~17 s after it was issued
    stack = make_stack("[tls]\nvalid_days = 0.0012\nrenew_before_days = 0.001\n")
    stack.add_user(*AUTH)
    stack.start_daemon()
    issued_at = time.monotonic()
    first_cert = _served_certificate(stack.listen_port)
    nginx_started = stack.started_at("nginx")
    blob = os.urandom(256 * 1024 * 1024)
    session = session_for(AUTH, stack.ca)
    digest = push_blob(session, stack.url, "big/blob", blob)
    del blob
    assert time.monotonic() - issued_at < 14, "push too slow to straddle the renewal"
    response = session.get(f"{stack.url}/v2/big/blob/blobs/{digest}", stream=True, timeout=60)
    assert response.status_code == 200
    sha = hashlib.sha256()
    received = 0
    for chunk in response.iter_content(1024 * 1024):
        sha.update(chunk)
        received += len(chunk)
        # spread the download over the renewal moment (~17 s after issue)
        if time.monotonic() - issued_at < 25:
            time.sleep(0.07)
    assert received == 256 * 1024 * 1024
    assert "sha256:" + sha.hexdigest() == digest
    renewed = [line for line in stack.log().splitlines() if "server certificate renewed" in line]
    assert renewed, stack.log()[-2000:]
    assert _served_certificate(stack.listen_port) != first_cert
    assert stack.started_at("nginx") == nginx_started
    assert stack.get(auth=AUTH).status_code == 200  # the new certificate chains to the same CA


def test_tls_is_mozilla_intermediate_compliant(stack):
    """sslyze (test-only, its own venv: tests/run) against the proxy, the generated CA trusted."""
    import os
    import subprocess

    from tests.integration.conftest import REPO

    sslyze = REPO / ".venv-sslyze" / "bin" / "sslyze"
    if not sslyze.exists():
        if os.environ.get("CI") == "true":
            raise AssertionError("sslyze missing: tests/run installs it")
        import pytest

        pytest.skip("sslyze not installed (tests/run installs it)")
    stack.start_daemon()
    result = subprocess.run(
        [
            str(sslyze),
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={stack.ca}",
            f"localhost:{stack.listen_port}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"localhost:{stack.listen_port}: OK - Compliant" in result.stdout, result.stdout[-3000:]
