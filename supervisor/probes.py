"""Active liveness probes, run from the daemon (a hung process still looks "running" to Docker).

- registry: GET / on its listener answers 200 (503 when its storage health check fails).
- nginx: TLS GET /v2/ without credentials answers 401 (nginx alone, no registry involved).
- end to end: GET /registry-health on nginx's internal status port reaches the registry through
  nginx; used for readiness (systemd's READY=1), never to decide a restart.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from supervisor.const import NGINX_STATUS_PATH


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def _get(
    conn: http.client.HTTPConnection, path: str, expect: int, headers: dict[str, str] | None = None
) -> ProbeResult:
    try:
        conn.request("GET", path, headers={"User-Agent": "regsupervisor-probe", **(headers or {})})
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = (
            "timed out" if isinstance(exc, socket.timeout | TimeoutError) else str(exc) or type(exc).__name__
        )
        return ProbeResult(False, f"GET {path}: {reason}")
    finally:
        conn.close()
    if response.status != expect:
        return ProbeResult(False, f"GET {path}: HTTP {response.status}, expected {expect}")
    return ProbeResult(True, f"HTTP {response.status}")


def _insecure_context() -> ssl.SSLContext:
    # A liveness probe of our own proxy: the handshake must work, trust is the client's business.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS = _insecure_context()


def probe_registry(host: str, port: int, timeout: float) -> ProbeResult:
    return _get(http.client.HTTPConnection(host, port, timeout=timeout), "/", 200)


def probe_proxy(host: str, port: int, timeout: float, token: str = "") -> ProbeResult:
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_TLS)
    # The token keeps these 401s out of the failed-login limit (nginx_conf.py).
    return _get(conn, "/v2/", 401, {"X-Regsupervisor-Probe": token} if token else None)


def probe_through_proxy(host: str, port: int, timeout: float) -> ProbeResult:
    return _get(http.client.HTTPConnection(host, port, timeout=timeout), NGINX_STATUS_PATH, 200)
