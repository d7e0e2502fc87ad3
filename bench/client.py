"""A lean Distribution API client for timing: monolithic blob push, streamed pull, /v2/ polls.

http.client rather than requests: fewer layers between the socket and the clock, large reads into
one reused buffer, and the same code path for plain HTTP (the registry's own port) and TLS.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

READ_CHUNK = 1 << 20
USER_AGENT = "regsupervisor-bench/1"


class TransferError(Exception):
    pass


def digest_of(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Endpoint:
    """One way in: the registry's own port (http) or a TLS proxy (https, basic auth, a CA)."""

    label: str
    scheme: str
    port: int
    ca: str = ""
    auth: tuple[str, str] | None = None
    host: str = "127.0.0.1"
    _context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def context(self) -> ssl.SSLContext:
        # Made on first use: the daemon writes its CA only when it first runs.
        if self._context is None:
            object.__setattr__(self, "_context", ssl.create_default_context(cafile=self.ca or None))
        assert self._context is not None
        return self._context

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        headers.update(extra or {})
        return headers


def get_status(endpoint: Endpoint, path: str = "/v2/", timeout: float = 2.0) -> int | str:
    """The HTTP status of one GET on a fresh connection, or the error's name."""
    try:
        conn = endpoint.connect(timeout)
    except OSError as exc:  # the CA file is not there yet
        return type(exc).__name__
    try:
        conn.request("GET", path, headers=endpoint.headers())
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def push_blob(endpoint: Endpoint, repo: str, blob: bytes, digest: str, timeout: float = 600) -> float:
    """Monolithic upload (POST, then one PUT with the whole body); returns the seconds it took."""
    conn = endpoint.connect(timeout)
    try:
        started = time.perf_counter()
        conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers=endpoint.headers({"Content-Length": "0"}))
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise TransferError(f"{endpoint.label}: POST upload -> HTTP {response.status}")
        location = urlsplit(response.getheader("Location", ""))
        target = location.path + ("?" + location.query if location.query else "")
        target += ("&" if location.query else "?") + f"digest={digest}"
        conn.request(
            "PUT",
            target,
            body=blob,
            headers=endpoint.headers(
                {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))}
            ),
        )
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 201:
            raise TransferError(f"{endpoint.label}: PUT blob -> HTTP {response.status}: {body[:200]!r}")
        return elapsed
    except (OSError, http.client.HTTPException) as exc:
        raise TransferError(f"{endpoint.label}: push failed: {exc!r}") from None
    finally:
        conn.close()


def pull_blob(
    endpoint: Endpoint, path: str, digest: str, size: int, timeout: float = 600, verify: bool = True
) -> float:
    """GET a blob (or any file), hashing it as it streams in; returns the seconds it took.

    The digest is checked after the clock stops, but hashed while reading, as a client must.
    """
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    hasher = hashlib.sha256()
    conn = endpoint.connect(timeout)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=endpoint.headers())
        response = conn.getresponse()
        if response.status != 200:
            raise TransferError(f"{endpoint.label}: GET {path} -> HTTP {response.status}")
        received = 0
        while True:
            n = response.readinto(view)
            if not n:
                break
            received += n
            if verify:
                hasher.update(view[:n])
        elapsed = time.perf_counter() - started
    except (OSError, http.client.HTTPException) as exc:
        raise TransferError(f"{endpoint.label}: pull failed: {exc!r}") from None
    finally:
        conn.close()
    if received != size:
        raise TransferError(f"{endpoint.label}: got {received} bytes of {size}")
    if verify and "sha256:" + hasher.hexdigest() != digest:
        raise TransferError(f"{endpoint.label}: digest mismatch")
    return elapsed


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/{repo}/blobs/{digest}"


def wait_status(
    endpoint: Endpoint,
    want: int = 200,
    timeout: float = 60.0,
    pause: float = 0.02,
    started: float | None = None,
) -> float:
    """Poll one request at a time until `want`; returns seconds since `started` (default: now)."""
    started = time.monotonic() if started is None else started
    deadline = started + timeout
    while time.monotonic() < deadline:
        if get_status(endpoint, timeout=1.0) == want:
            return time.monotonic() - started
        time.sleep(pause)
    raise TimeoutError(f"{endpoint.label}: no HTTP {want} on /v2/ within {timeout:.0f}s")


@dataclass(frozen=True)
class Sample:
    start: float  # monotonic
    end: float
    status: int | str

    @property
    def ok(self) -> bool:
        return self.status == 200


class Poller:
    """Launches one authenticated GET /v2/ every `period` seconds, each on its own connection and
    thread, so a request stuck on a hung backend does not hide the moment service comes back."""

    def __init__(
        self, endpoint: Endpoint, period: float = 0.1, timeout: float = 2.0, max_seconds: float = 120
    ):
        self.endpoint, self.period, self.timeout, self.max_seconds = endpoint, period, timeout, max_seconds
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=int(timeout / period) + 4)
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _one(self) -> None:
        start = time.monotonic()
        status = get_status(self.endpoint, timeout=self.timeout)
        with self._lock:
            self.samples.append(Sample(start, time.monotonic(), status))

    def _run(self) -> None:
        began = time.monotonic()
        next_at = began
        while not self._stop.is_set() and time.monotonic() - began < self.max_seconds:
            self._pool.submit(self._one)
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def first_ok_after(self, t: float) -> Sample | None:
        with self._lock:
            ok = [s for s in self.samples if s.ok and s.start >= t]
        return min(ok, key=lambda s: s.end) if ok else None

    def wait_ok_after(self, t: float, timeout: float) -> Sample | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first_ok_after(t)
            if found is not None:
                return found
            time.sleep(0.02)
        return self.first_ok_after(t)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return sorted(self.samples, key=lambda s: s.start)
