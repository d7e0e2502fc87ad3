"""The stacks under test: the regsupervisor daemon, the post's compose stack (as published and with
`restart: always`) and two helper nginx containers (a static-TLS ceiling and a tuned proxy).

Everything is created under one temp directory and carries a per-run name, so cleanup removes
exactly what this run made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_docker.plugin import DockerComposeExecutor, Services, get_docker_services

from bench.client import Endpoint, get_status

REPO = Path(__file__).resolve().parents[1]


def regsupervisor_argv(*args: str, config: Path) -> list[str]:
    """The command line of `regsupervisor ARGS --config CONFIG`, from this checkout."""
    return [sys.executable, "-m", "supervisor", *args, "--config", str(config)]


def start_daemon_process(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`regsupervisor run` in the background, its JSON log appended to log_path."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            regsupervisor_argv("run", "--log-format", "json", config=config),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


BASELINE = REPO / "bench" / "baseline"
REGISTRY_IMAGE = "registry:2"
NGINX_IMAGE = "nginx:1.28"
BENCH_LABEL = "io.regsupervisor.bench"
USER = ("bench", "bench-pass-1")
# The Debian package's command; pytest-docker's default ("docker compose") is the v2 plugin.
COMPOSE_COMMAND = "docker-compose"


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_docker_time(text: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds) -> POSIX seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not match:
        raise ValueError(text)
    base = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC).timestamp()
    return base + (int((match.group(2) or "0")[:9].ljust(9, "0")) / 1e9)


# --- TLS material and users for the baseline and helper containers ---------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, names: tuple[str, ...] = ("registry.iulitab.co.uk", "localhost")) -> Pki:
    """A CA and a server certificate for `names` and 127.0.0.1 (EC P-256, like the daemon's)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regsupervisor bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.key.chmod(0o600)
    return pki


def htpasswd_file(path: Path, user: tuple[str, str]) -> None:
    """As the post: `htpasswd -c registry.password USER` (-b: the password from the command line)."""
    subprocess.run(
        ["htpasswd", "-c", "-b", str(path), user[0], user[1]],
        check=True,
        capture_output=True,
        timeout=30,
    )
    path.chmod(0o644)


# --- the regsupervisor daemon ----------------------------------------------------------------


@dataclass
class DaemonStack:
    client: docker.DockerClient
    root: Path
    name: str
    health: str = ""  # extra TOML for [health]; empty: the daemon's defaults
    listen_port: int = field(default_factory=free_port)
    publish_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'name = "{self.name}"\n'
            f'state_dir = "{self.state_dir}"\n'
            '[docker]\npull = "never"\n'
            f'[registry]\nimage = "{REGISTRY_IMAGE}"\npublish = "127.0.0.1:{self.publish_port}"\n'
            f'[proxy]\nimage = "{NGINX_IMAGE}"\nlisten = "127.0.0.1:{self.listen_port}"\n'
            "[respawn]\n# unlimited, for the 200-respawn figure; crashes are spaced out anyway\nlimit = 0\n"
            + (f"[health]\n{self.health}\n" if self.health else "")
        )

    label = "regsupervisor"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    @property
    def ca(self) -> Path:
        return self.state_dir / "tls" / "ca.crt"

    def endpoint(self) -> Endpoint:
        return Endpoint("regsupervisor", "https", self.listen_port, str(self.ca), USER)

    def direct(self) -> Endpoint:
        return Endpoint("direct", "http", self.publish_port)

    def container_name(self, service: str) -> str:
        return f"{self.name}-{service}"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            regsupervisor_argv(*args, config=self.config_path),
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=180,
        )
        if result.returncode != 0:
            raise BenchError(f"regsupervisor {' '.join(args)}: {result.stderr.strip()[-500:]}")
        return result.stdout

    def add_user(self) -> None:
        self.cli("user", "add", USER[0], "--password-stdin", stdin=USER[1] + "\n")

    def start(self) -> subprocess.Popen[bytes]:
        self.process = start_daemon_process(self.config_path, self.log_path)
        return self.process

    def report(self) -> dict:
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def supervision(self, service: str) -> str:
        return str(self.report().get("services", {}).get(service, {}).get("supervision", ""))

    def wait_supervision(self, service: str, state: str = "running", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.supervision(service) == state:
                return
            time.sleep(0.05)
        raise BenchError(f"daemon: {service} not {state} within {timeout:.0f}s")

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"daemon exited {self.process.returncode}: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def down(self) -> None:
        self.stop()
        self.cli("down")

    def cleanup(self) -> None:
        """Best effort, for errors: kill our daemon, remove its containers and network."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        with contextlib.suppress(Exception):
            self.cli("down")


# --- the post's compose stack ----------------------------------------------------------------


@dataclass
class ComposeStack:
    """The post's directory (docker-compose.yml, nginx/, data/) in a temp dir, run with the Debian
    docker-compose through pytest-docker's helpers."""

    client: docker.DockerClient
    root: Path
    project: str
    restart_always: bool = False
    nginx_port: int = field(default_factory=free_port)
    registry_port: int = field(default_factory=free_port)
    _up: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.label = "compose + restart: always" if self.restart_always else "compose (post)"
        (self.root / "nginx").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        text = (BASELINE / "docker-compose.yml").read_text()
        for old, new in (
            ("- 5443:443", f"- 127.0.0.1:{self.nginx_port}:443"),
            ("- 127.0.0.1:5000:5000", f"- 127.0.0.1:{self.registry_port}:5000"),
        ):
            if old not in text:
                raise BenchError(f"bench/baseline/docker-compose.yml: no line {old!r}")
            text = text.replace(old, new)
        (self.root / "docker-compose.yml").write_text(text)
        shutil.copy(BASELINE / "docker-compose.restart-always.yml", self.root)
        nginx = self.root / "nginx"
        shutil.copy(BASELINE / "nginx" / "nginx.conf", nginx / "nginx.conf")
        pki = make_pki(self.root / "pki")
        shutil.copy(pki.cert, nginx / "iulitab.co.uk.crt")
        shutil.copy(pki.key, nginx / "iulitab.co.uk.key")
        self.ca = pki.ca
        htpasswd_file(nginx / "registry.password", USER)
        nginx.chmod(0o755)

    @property
    def files(self) -> list[str]:
        files = [str(self.root / "docker-compose.yml")]
        if self.restart_always:
            files.append(str(self.root / "docker-compose.restart-always.yml"))
        return files

    def executor(self) -> DockerComposeExecutor:
        return DockerComposeExecutor(COMPOSE_COMMAND, self.files, self.project)

    def compose_argv(self, *args: str) -> list[str]:
        argv = [COMPOSE_COMMAND]
        for f in self.files:
            argv += ["-f", f]
        return [*argv, "-p", self.project, *args]

    @contextlib.contextmanager
    def services(self) -> Iterator[Services]:
        """`up -d` on entry, `down -v` on exit (pytest-docker), and `down -v` if `up` failed."""
        try:
            with get_docker_services(COMPOSE_COMMAND, self.files, self.project, ["up -d"], ["down -v"]) as s:
                yield s
        except Exception:
            self.force_down()
            raise

    def up(self) -> None:
        self._up.enter_context(self.services())

    def down(self) -> None:
        self._up.close()

    def force_down(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(self.compose_argv("down", "-v"), capture_output=True, timeout=120)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.label, "https", self.nginx_port, str(self.ca), USER)

    def direct(self) -> Endpoint:
        return Endpoint(f"{self.label} registry port", "http", self.registry_port)

    def container_name(self, service: str) -> str:
        found = self.client.api.containers(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        if not found:
            raise BenchError(f"{self.project}: no {service} container")
        return str(found[0]["Names"][0]).lstrip("/")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._up.close()
        self.force_down()


# --- helper nginx containers -----------------------------------------------------------------


STATIC_CONF = """\
# nginx serving the blob as a static file over TLS: the TLS ceiling of this machine.
server {
    listen 443 ssl;
    ssl_certificate /etc/nginx/conf.d/server.crt;
    ssl_certificate_key /etc/nginx/conf.d/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
        root /srv;
    }
}
"""

# Proposed additions to the generated /v2/ location (see bench/README section in the main README).
TUNING = {
    "client_body_buffer_size": "256k",
    "proxy_buffer_size": "64k",
    "proxy_buffers": "8 256k",
    "proxy_busy_buffers_size": "512k",
}
TUNING_ANCHOR = "proxy_max_temp_file_size 0;"


def tuned_config(generated: str) -> str:
    """The daemon's generated config plus TUNING in its /v2/ location (replacing any value set)."""
    lines = [
        line
        for line in generated.splitlines(keepends=True)
        if line.strip().split(" ", 1)[0] not in TUNING or "location" in line
    ]
    text = "".join(lines)
    if TUNING_ANCHOR not in text:
        raise BenchError(f"generated nginx config has no {TUNING_ANCHOR!r}: cannot place the tuning")
    indent = re.search(r"\n([ \t]*)" + re.escape(TUNING_ANCHOR), text)
    pad = indent.group(1) if indent else "        "
    extra = "".join(f"\n{pad}{k} {v};" for k, v in TUNING.items())
    return text.replace(TUNING_ANCHOR, TUNING_ANCHOR + extra, 1)


@dataclass
class HelperNginx:
    client: docker.DockerClient
    name: str
    run_label: str
    conf_dir: Path
    label: str
    ca: str
    auth: tuple[str, str] | None = None
    network: str | None = None
    mounts: dict[str, dict[str, str]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    container_id: str = ""

    def start(self) -> None:
        self.conf_dir.chmod(0o755)
        volumes = {str(self.conf_dir): {"bind": "/etc/nginx/conf.d", "mode": "ro"}, **self.mounts}
        container = self.client.containers.run(
            NGINX_IMAGE,
            detach=True,
            name=self.name,
            labels={BENCH_LABEL: self.run_label},
            network=self.network,
            volumes=volumes,
            ports={"443/tcp": ("127.0.0.1", self.port)},
        )
        self.container_id = container.id
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if isinstance(get_status(self.endpoint(), path="/", timeout=1.0), int):
                return
            time.sleep(0.05)
        logs = container.logs(tail=20).decode(errors="replace")
        raise BenchError(f"{self.name} did not come up: {logs}")

    def endpoint(self) -> Endpoint:
        return Endpoint(self.label, "https", self.port, self.ca, self.auth)


def remove_labelled(client: docker.DockerClient, run_label: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={run_label}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def sweep(client: docker.DockerClient, run_id: str, patience: float = 90) -> list[str]:
    """Last resort, by name: whatever of this run is still there (a `restart: always` container
    brought back by an engine restart, a compose project whose `down` met no engine). Waits for an
    engine that is restarting."""
    prefixes = (f"bench{run_id}", f"benchpost{run_id}", f"benchalways{run_id}")
    deadline = time.monotonic() + patience
    while True:
        try:
            client.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                return [f"engine unreachable, could not check for leftovers of run {run_id}"]
            time.sleep(2)
    removed = []
    for container in client.containers.list(all=True):
        if container.name.startswith(prefixes):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed.append(container.name)
    for network in client.networks.list():
        if network.name.startswith(prefixes):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
                removed.append(network.name)
    return removed


def engine_versions(client: docker.DockerClient) -> dict[str, str]:
    versions = {"engine": str(client.version().get("Version", "?"))}
    try:
        out = subprocess.run(
            [COMPOSE_COMMAND, "version", "--short"], capture_output=True, text=True, timeout=30
        )
        versions["docker-compose"] = out.stdout.strip() or out.stderr.strip()
    except OSError as exc:
        versions["docker-compose"] = f"missing ({exc})"
    for image in (REGISTRY_IMAGE, NGINX_IMAGE):
        try:
            labels = client.images.get(image).labels or {}
            versions[image] = labels.get("regsupervisor.built-from", "upstream image")
        except docker.errors.ImageNotFound:
            versions[image] = "missing"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "supervisor"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        versions["regsupervisor"] = head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")
    except OSError:
        versions["regsupervisor"] = "?"
    versions["python"] = sys.version.split()[0]
    versions["kernel"] = os.uname().release
    return versions
