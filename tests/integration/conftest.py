"""Fixtures that drive the real engine: a client, unique project names, a running daemon."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import requests

from bench.stacks import regsupervisor_argv, start_daemon_process
from supervisor.const import LABEL_PROJECT
from tests.engine import NGINX_IMAGE, REGISTRY_IMAGE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def client(docker_engine) -> docker.DockerClient:
    return docker_engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container_pid(client: docker.DockerClient, name: str) -> int:
    return int(client.api.inspect_container(name)["State"]["Pid"])


def kill_main_process(client: docker.DockerClient, name: str, sig: int = signal.SIGKILL) -> int:
    """Crash (or hang, with SIGSTOP) a container's main process from the host, as a fault would."""
    pid = container_pid(client, name)
    assert pid > 1, f"{name} is not running (pid {pid})"
    os.kill(pid, sig)
    return pid


@dataclass
class Stack:
    """One project: its config file, state dir and ports, and the daemon process driving it."""

    client: docker.DockerClient
    root: Path
    name: str
    listen_port: int
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "daemon.log"
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}"

    @property
    def ca(self) -> str:
        return str(self.state_dir / "tls" / "ca.crt")

    def write_config(self, extra: str | None = None, listen_port: int | None = None) -> None:
        if extra is not None:
            self.extra_config = extra
        if listen_port is not None:
            self.listen_port = listen_port
        self.config_path.write_text(
            f'name = "{self.name}"\n'
            f'state_dir = "{self.state_dir}"\n'
            '[docker]\npull = "never"\n'
            f'[registry]\nimage = "{REGISTRY_IMAGE}"\n'
            f'[proxy]\nimage = "{NGINX_IMAGE}"\nlisten = "127.0.0.1:{self.listen_port}"\n'
            "[health]\ninterval = 0.5\ntimeout = 1.0\nfailures = 3\nstart_period = 5.0\n" + self.extra_config
        )

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            regsupervisor_argv(*args, config=self.config_path),
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def start_daemon(self, wait: bool = True) -> subprocess.Popen[bytes]:
        self.process = start_daemon_process(self.config_path, self.log_path)
        if wait:
            self.wait_serving()
        return self.process

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def get(self, path: str = "/v2/", auth: tuple[str, str] | None = None, **kwargs) -> requests.Response:
        return requests.get(self.url + path, auth=auth, verify=self.ca, timeout=5, **kwargs)

    def serving(self, auth: tuple[str, str] | None = None) -> bool:
        try:
            return self.get(auth=auth).status_code == (200 if auth else 401)
        except (requests.RequestException, ssl.SSLError, OSError):
            return False

    def daemon_report(self) -> dict:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def daemon_ready(self) -> bool:
        report = self.daemon_report()
        return self.process is None or (report.get("pid") == self.process.pid and report.get("ready"))

    def wait_serving(self, auth: tuple[str, str] | None = None, timeout: float = 60) -> float:
        """Wait until the daemon we started says it is ready and the proxy answers."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()[-3000:]}")
            if self.daemon_ready() and self.serving(auth):
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"not serving after {timeout}s:\n{self.log()[-3000:]}")

    def container(self, service: str) -> dict:
        return self.client.api.inspect_container(f"{self.name}-{service}")

    def started_at(self, service: str) -> str:
        return self.container(service)["State"]["StartedAt"]

    def add_user(self, name: str, password: str) -> None:
        self.cli("user", "add", name, "--password-stdin", stdin=password + "\n")

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={self.name}"}):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for net in self.client.networks.list(names=[self.name]):
            with contextlib.suppress(docker.errors.APIError):
                net.remove()


@pytest.fixture
def make_stack(client, tmp_path):
    stacks: list[Stack] = []

    def make(extra_config: str = "") -> Stack:
        stack = Stack(
            client, tmp_path / f"s{len(stacks)}", f"rt{secrets.token_hex(4)}", free_port(), extra_config
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.cleanup()


@pytest.fixture
def stack(make_stack) -> Stack:
    return make_stack()
