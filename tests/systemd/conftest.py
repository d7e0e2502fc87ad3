"""A real systemd (PID 1 in a container) with regsupervisor installed as README.md says, driving
the host's engine through its socket.

The container runs with the host's network (the daemon probes container addresses and the proxy's
127.0.0.1 port) and sees one host directory at the same path, since the engine resolves the
daemon's bind mounts on the host: the test's state_dir, its copy of the source and the wheels pip
installs from. Debian's docker.socket and docker.service are not in the container (the engine is
the host's): stand-ins with those names put the host engine's socket at /run/docker.sock, socket
activated through systemd-socket-proxyd, so the unit's Requires=/After= on them are exercised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

from supervisor.const import LABEL_PROJECT
from tests.engine import NGINX_IMAGE, REGISTRY_IMAGE, unavailable
from tests.integration.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
UNIT = "regsupervisor"
CONFIG = "/etc/regsupervisor/config.toml"
CLI = "/opt/regsupervisor/bin/regsupervisor"
USER = ("ops", f"pw-{secrets.token_hex(8)}")
# Where the host engine's socket appears inside the container (the stand-in proxies to it).
HOST_ENGINE_SOCKET = "/run/host-engine/docker.sock"
WHEEL_CACHE = Path("/var/cache/regsupervisor-test")
# The test's host directory: not under /tmp or /var/tmp, which PrivateTmp= hides from the service.
HOST_ROOT_PARENT = Path("/srv")

DOCKER_STANDINS = {
    "docker.socket": """\
[Unit]
Description=Docker socket (test stand-in: the host's engine, proxied)

[Socket]
ListenStream=/run/docker.sock
SocketMode=0660

[Install]
WantedBy=sockets.target
""",
    "docker.service": f"""\
[Unit]
Description=Docker engine (test stand-in: the host's engine through its socket)
Requires=docker.socket
After=docker.socket

[Service]
ExecStart=/lib/systemd/systemd-socket-proxyd {HOST_ENGINE_SOCKET}
""",
}


@pytest.fixture(scope="session")
def engine(docker_engine) -> docker.DockerClient:
    return docker_engine


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        unavailable(f"the systemd tests mount the engine's socket: DOCKER_HOST={host} is not one")
    return host.removeprefix("unix://")


@pytest.fixture(scope="session")
def systemd_image(engine, request) -> str:
    """Built by scripts/build-systemd-image: from scratch on a fresh machine, else reused."""
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts" / "build-systemd-image")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary(request.config, f"scripts/build-systemd-image: {time.monotonic() - started:.1f}s")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Wheels of the project's dependencies (and its build backend) for pip in the container,
    fetched once on the host with the host's pip configuration and kept per dependency set."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = sorted([*project["project"]["dependencies"], *project["build-system"]["requires"]])
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    target = WHEEL_CACHE / f"wheels-py311-{key}"
    if target.is_dir():
        return target
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=WHEEL_CACHE))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--python-version=3.11",  # Debian bookworm's python3
                "--dest",
                str(partial),
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


@dataclass
class Exec:
    code: int
    out: str
    err: str


def readme_install_steps() -> list[str]:
    """The first code block of README.md's "Run it as a service": what the test runs verbatim."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Run it as a service\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\n\n((?:    \S.*\n)+)", section)
    assert block, "README.md: no install commands under 'Run it as a service'"
    return [line[4:] for line in block.group(1).splitlines()]


@dataclass
class Machine:
    """The systemd container, the daemon's config and the registry it runs."""

    engine: docker.DockerClient
    container: docker.models.containers.Container
    root: Path
    name: str
    port: int

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.state_dir / "tls" / "ca.crt")

    # --- in the container ---------------------------------------------------------------------

    def run(self, command: str, env: dict[str, str] | None = None, timeout: int = 120) -> Exec:
        code, (out, err) = self.container.exec_run(
            ["timeout", str(timeout), "bash", "-c", command], environment=env, demux=True
        )
        return Exec(code, (out or b"").decode(), (err or b"").decode())

    def sh(self, command: str, env: dict[str, str] | None = None, timeout: int = 120) -> str:
        result = self.run(command, env, timeout)
        assert result.code == 0, f"{command}: exit {result.code}\n{result.out}\n{result.err}"
        return result.out

    def write(self, path: str, content: str) -> None:
        self.sh(f'mkdir -p "$(dirname {path})" && printf %s "$CONTENT" >{path}', env={"CONTENT": content})

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        out = self.sh("journalctl -n 1 -o json --no-pager")
        return json.loads(out.splitlines()[-1])["__CURSOR"] if out.strip() else ""

    def journal(self, after: str = "", priority: str = "") -> list[dict]:
        """`journalctl -u regsupervisor [-p PRIORITY]` entries, those after the cursor `after`.

        journalctl 252 combining --after-cursor with -p sometimes finds nothing at all: the
        entries after the cursor are taken from the plain listing instead."""
        command = f"journalctl -u {UNIT} -o json --no-pager"
        listing = self._json_lines(command + (f" -p {priority}" if priority else ""))
        if not after:
            return listing
        later = {e["__CURSOR"] for e in self._json_lines(f"{command} --after-cursor='{after}'")}
        return [e for e in listing if e["__CURSOR"] in later]

    def _json_lines(self, command: str) -> list[dict]:
        return [json.loads(line) for line in self.sh(command).splitlines() if line.strip()]

    def messages(self, after: str = "", priority: str = "", identifier: str = UNIT) -> list[str]:
        """MESSAGE of the unit's journal entries from the daemon (or from systemd about it)."""
        return [
            e["MESSAGE"]
            for e in self.journal(after, priority)
            if e.get("SYSLOG_IDENTIFIER") == identifier and isinstance(e.get("MESSAGE"), str)
        ]

    def notifications(self, after: str = "") -> list[str]:
        """The sd_notify messages systemd got from the daemon (PID 1 logs them at debug level)."""
        pattern = re.compile(rf"(?:{UNIT}\.service: )?Got notification message from PID \d+ \((.*)\)$")
        found = (pattern.match(m) for m in self.messages(after, identifier="systemd"))
        return [m.group(1) for m in found if m]

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 30) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                tail = "\n".join(self.messages()[-40:])
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; journal:\n{tail}")
            time.sleep(0.2)

    def wait_message(self, text: str, after: str, priority: str = "", timeout: float = 30) -> list[str]:
        return self.wait_for(  # type: ignore[return-value]
            f"{text!r} in the journal",
            lambda: [m for m in self.messages(after, priority) if text in m],
            timeout,
        )

    def write_config(self, extra: str = "", registry_image: str = REGISTRY_IMAGE) -> None:
        self.write(
            CONFIG,
            f'name = "{self.name}"\n'
            f'state_dir = "{self.state_dir}"\n'
            '[docker]\npull = "never"\n'
            f'[registry]\nimage = "{registry_image}"\n'
            f'[proxy]\nimage = "{NGINX_IMAGE}"\nlisten = "127.0.0.1:{self.port}"\n'
            "[health]\ninterval = 0.5\ntimeout = 1.0\nfailures = 3\nstart_period = 5.0\n" + extra,
        )

    def ensure_running(self) -> None:
        if self.run(f"systemctl is-active --quiet {UNIT}").code != 0:
            self.write_config()
            self.sh(f"systemctl reset-failed {UNIT} || true; systemctl start {UNIT}", timeout=300)

    # --- from the host ------------------------------------------------------------------------

    def session(self) -> requests.Session:
        session = requests.Session()
        session.auth = USER
        session.verify = self.ca
        session.trust_env = False
        return session

    def container_state(self, service: str) -> dict:
        return self.engine.api.inspect_container(f"{self.name}-{service}")["State"]


def _wait_booted(container) -> None:
    deadline = time.monotonic() + 120
    while True:
        _, out = container.exec_run(["systemctl", "is-system-running", "--wait"])
        state = out.decode().strip()
        if state in ("running", "degraded"):
            return
        if time.monotonic() > deadline:
            container.reload()
            raise AssertionError(f"systemd did not boot ({state!r}, {container.status}):\n{container.logs()}")
        time.sleep(0.2)


def _copy_source(dest: Path) -> None:
    """The work tree as a user's checkout would have it (pip writes build files into it)."""
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".*_cache", ".hypothesis", "__pycache__", "*.egg-info", "build", "bench-results"
        ),
    )


@pytest.fixture(scope="module")
def machine(engine, systemd_image, wheelhouse) -> Iterator[Machine]:
    HOST_ROOT_PARENT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="regsup-systemd-", dir=HOST_ROOT_PARENT))
    name = f"rsd{secrets.token_hex(4)}"
    container = None
    try:
        _copy_source(root / "src")
        container = engine.containers.run(
            systemd_image,
            name=f"{name}-systemd",
            detach=True,
            cap_add=["SYS_ADMIN"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            network_mode="host",
            tmpfs={"/run": "", "/run/lock": ""},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                engine_socket(): {"bind": HOST_ENGINE_SOCKET, "mode": "rw"},
                str(root): {"bind": str(root), "mode": "rw"},
                str(wheelhouse): {"bind": "/wheels", "mode": "ro"},
            },
            # Not the project label: the daemon removes containers with it that are not its own.
            labels={"io.regsupervisor.test": "systemd"},
        )
        machine = Machine(engine, container, root, name, free_port())
        _wait_booted(container)
        # PID 1 logs every sd_notify message it gets at debug level: the tests read them.
        machine.sh("systemd-analyze log-level debug")
        for unit, text in DOCKER_STANDINS.items():
            machine.write(f"/etc/systemd/system/{unit}", text)
        # README.md, "Run it as a service", from the checkout; pip takes what it needs from the
        # host's wheels instead of an index.
        steps = "set -ex\n" + "\n".join(readme_install_steps())
        machine.sh(
            f"cd {root / 'src'} && {steps}",
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            timeout=600,
        )
        # ... then edit the config, allow the state_dir outside /var/lib/regsupervisor, add a user.
        machine.write_config()
        machine.write(
            "/etc/systemd/system/regsupervisor.service.d/paths.conf",
            f"[Service]\nReadWritePaths={machine.state_dir}\n",
        )
        machine.sh("systemctl daemon-reload")
        machine.sh(
            f'printf "%s\\n" "$PASSWORD" | {CLI} user add {USER[0]} --password-stdin --config {CONFIG}',
            env={"PASSWORD": USER[1]},
        )
        yield machine
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.exec_run(["timeout", "90", "systemctl", "stop", UNIT])
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={name}"}):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for net in engine.networks.list(names=[name]):
            with contextlib.suppress(docker.errors.APIError):
                net.remove()
        shutil.rmtree(root, ignore_errors=True)


SUMMARY_KEY = pytest.StashKey[list[str]]()


def summary(config: pytest.Config, line: str) -> None:
    """A line for the end of the run (figures the issue asks to see, whatever the verbosity)."""
    config.stash.setdefault(SUMMARY_KEY, []).append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for line in config.stash.get(SUMMARY_KEY, []):
        terminalreporter.write_line(line)
