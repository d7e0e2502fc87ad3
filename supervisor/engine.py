"""The thin shell over the Docker engine: connect, inspect, create, start, stop, pull, retry.

Nothing here decides anything; reconcile.py and supervise.py do.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
import structlog
from docker.utils import parse_repository_tag
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from supervisor.const import LABEL_CONFIG_HASH, LABEL_PROJECT, LABEL_SERVICE
from supervisor.errors import UserError, describe_os_error
from supervisor.specs import ContainerSpec

log = structlog.get_logger()

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
API_TIMEOUT = 60

T = TypeVar("T")


class EngineUnreachable(UserError):
    pass


class StaleContainer(Exception):
    """The engine cannot start this container again (after a dockerd restart, containerd may
    still hold a task under its ID: "task ...: already exists"); a new container will start."""


def is_transient(exc: BaseException) -> bool:
    """Connection trouble and engine-side 5xx errors are worth retrying; the rest are not."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, docker.errors.APIError) and exc.is_server_error():
        text = str(exc).lower()
        return (
            not _is_port_conflict(exc)
            and not _is_stale_task(exc)
            and not any(word in text for word in _PERMANENT)
        )
    return False


def _is_stale_task(exc: BaseException) -> bool:
    return "task" in str(exc) and "already exists" in str(exc)


# Engine 5xx answers that no retry will change.
_PERMANENT = ("no such image", "manifest unknown", "not found", "unauthorized", "denied")


def _is_port_conflict(exc: BaseException) -> bool:
    text = str(exc)
    return "port is already allocated" in text or "address already in use" in text


def retrying(max_seconds: float = 30.0) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Retry a Docker call on transient errors with exponential backoff, then re-raise."""
    return retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_delay(max_seconds),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "docker call failed, retrying",
            call=getattr(state.fn, "__name__", "?"),
            attempt=state.attempt_number,
            error=str(state.outcome.exception() if state.outcome else ""),
        ),
    )


def describe_error(exc: BaseException) -> str:
    """A Docker failure in one line, for the journal."""
    return f"docker: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
# What a supervision loop reports and retries instead of dying of: the engine's failures, the
# user's (fixed by editing the config and reloading) and the file system's.
RETRIED_ERRORS = (UserError, *DOCKER_ERRORS, OSError)


def describe_failure(exc: BaseException) -> str:
    """One of RETRIED_ERRORS in one line."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, DOCKER_ERRORS):  # before OSError: a RequestException is one
        return describe_error(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return repr(exc)


def describe_host(host: str) -> str:
    return host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def connect(host: str) -> docker.DockerClient:
    """A client for host (empty: DOCKER_HOST, else the default socket), checked with a ping."""
    where = describe_host(host)
    try:
        client = (
            docker.DockerClient(base_url=host, timeout=API_TIMEOUT)
            if host
            else docker.from_env(timeout=API_TIMEOUT)
        )
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngineUnreachable(
            f"cannot reach the Docker engine at {where}: {reason[:200]} "
            "(is dockerd running? set docker.host or DOCKER_HOST)"
        ) from None
    return client


@dataclass(frozen=True)
class Container:
    """A read-only view of `docker inspect` output."""

    attrs: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.attrs["Id"])

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        return str(self.attrs["Name"]).lstrip("/")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.attrs["Config"].get("Labels") or {})

    @property
    def service(self) -> str:
        return self.labels.get(LABEL_SERVICE, "")

    @property
    def config_hash(self) -> str:
        return self.labels.get(LABEL_CONFIG_HASH, "")

    @property
    def image(self) -> str:
        return str(self.attrs["Config"].get("Image", ""))

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.attrs["State"])

    @property
    def status(self) -> str:
        return str(self.state.get("Status", "unknown"))

    @property
    def running(self) -> bool:
        return bool(self.state.get("Running")) and not self.state.get("Paused")

    @property
    def pid(self) -> int:
        return int(self.state.get("Pid") or 0)

    @property
    def exit_code(self) -> int:
        return int(self.state.get("ExitCode") or 0)

    @property
    def oom_killed(self) -> bool:
        return bool(self.state.get("OOMKilled"))

    @property
    def started_at(self) -> str:
        return str(self.state.get("StartedAt", ""))

    @property
    def health(self) -> str:
        return str((self.state.get("Health") or {}).get("Status", ""))

    def ip(self, network: str) -> str:
        networks = (self.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        return str((networks.get(network) or {}).get("IPAddress") or "")

    @property
    def ports(self) -> list[str]:
        bound = (self.attrs.get("HostConfig") or {}).get("PortBindings") or {}
        return sorted(
            f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}->{port}"
            for port, bindings in bound.items()
            for b in bindings or ()
        )


class ProjectClient:
    """A Docker client scoped to one project's labelled objects."""

    def __init__(self, client: docker.DockerClient, project: str) -> None:
        self.client = client
        self.api = client.api
        self.project = project

    @property
    def label_filter(self) -> str:
        return f"{LABEL_PROJECT}={self.project}"


class Engine(ProjectClient):
    """Docker operations for one project, each retried on transient errors."""

    @retrying()
    def containers(self) -> list[Container]:
        found = self.api.containers(all=True, filters={"label": self.label_filter})
        result = []
        for summary in found:
            try:
                result.append(Container(self.api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:
                continue  # removed between list and inspect
        return result

    @retrying()
    def inspect(self, container_id: str) -> Container | None:
        try:
            return Container(self.api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None

    @retrying()
    def ensure_network(self, name: str) -> None:
        if not any(n["Name"] == name for n in self.api.networks(names=[name])):
            self.api.create_network(
                name, driver="bridge", labels={LABEL_PROJECT: self.project}, check_duplicate=True
            )
            log.info("network created", network=name)

    @retrying()
    def remove_network(self, name: str) -> None:
        for net in self.api.networks(names=[name]):
            if net["Name"] == name:
                try:
                    self.api.remove_network(net["Id"])
                except docker.errors.APIError as exc:
                    if exc.is_server_error():
                        raise
                    raise UserError(f"network {name}: {exc.explanation or exc}") from None
                log.info("network removed", network=name)

    @retrying()
    def has_image(self, ref: str) -> bool:
        try:
            self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def pull(self, ref: str) -> None:
        repo, tag = parse_repository_tag(ref)
        log.info("pulling image", image=ref)
        try:
            self._pull(repo, tag or "latest", ref)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            reason = getattr(exc, "explanation", None) or str(exc)
            raise UserError(f"cannot pull image {ref!r}: {str(reason).splitlines()[0][:300]}") from None

    @retrying(max_seconds=10)
    def _pull(self, repo: str, tag: str, ref: str) -> None:
        layers_done = 0
        for event in self.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(event["error"])
            status = event.get("status", "")
            if status in ("Pull complete", "Already exists"):
                layers_done += 1
                log.debug("image layer ready", image=ref, layer=event.get("id"), layers=layers_done)
            elif status.startswith(("Digest:", "Status:")):
                log.info("image pull progress", image=ref, status=status)

    def ensure_image(self, ref: str, policy: str) -> None:
        present = self.has_image(ref)
        if policy == "always" or (policy == "missing" and not present):
            self.pull(ref)
        elif not present:
            raise UserError(f"image {ref!r} is not present and docker.pull is 'never'")

    @retrying()
    def create(self, spec: ContainerSpec) -> Container:
        host_config = self.api.create_host_config(
            binds={m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts},
            port_bindings=spec.port_bindings,
            restart_policy={"Name": "no"},
            mem_limit=spec.memory or None,
            cap_drop=["ALL"],
            cap_add=list(spec.cap_add) or None,
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={path: "rw,nosuid,nodev,size=64m" for path in spec.tmpfs},
            pids_limit=spec.pids_limit,
            init=False,
        )
        networking = self.api.create_networking_config(
            {spec.network: self.api.create_endpoint_config(aliases=list(spec.aliases) or None)}
        )
        created = self.api.create_container(
            spec.image,
            name=spec.name,
            labels=spec.labels,
            environment=dict(spec.environment),
            ports=[p.container_port for p in spec.ports],
            host_config=host_config,
            networking_config=networking,
            stop_signal=spec.stop_signal,
            stop_timeout=spec.stop_timeout,
            detach=True,
        )
        return Container(self.api.inspect_container(created["Id"]))

    def start(self, container: Container, spec: ContainerSpec | None = None) -> None:
        try:
            self._start(container.id)
        except docker.errors.APIError as exc:
            if _is_port_conflict(exc):
                ports = ", ".join(str(p.host) for p in spec.ports) if spec else "?"
                raise UserError(f"{container.name}: port {ports} is already in use on this host") from None
            if _is_stale_task(exc):
                raise StaleContainer(container.name) from exc
            raise

    @retrying()
    def _start(self, container_id: str) -> None:
        self.api.start(container_id)

    @retrying()
    def stop(self, container: Container, timeout: int) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.stop(container.id, timeout=timeout)

    @retrying()
    def remove(self, container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container.id, force=True, v=False)

    @retrying()
    def signal(self, container: Container, signal: str) -> None:
        self.api.kill(container.id, signal=signal)

    def busy(self, container_id: str, window: float = 0.5) -> bool:
        """Whether the container used CPU within `window` seconds: a stopped (hung) process does
        not; one too busy to answer a probe in time does."""
        try:
            first = self._cpu_seconds(container_id)
            time.sleep(window)
            return self._cpu_seconds(container_id) - first > window * 0.05
        except (docker.errors.APIError, requests.exceptions.RequestException, KeyError, TypeError):
            return False

    def _cpu_seconds(self, container_id: str) -> float:
        stats = self.api.stats(container_id, stream=False, one_shot=True)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9

    @retrying()
    def kill_and_wait(self, container: Container, timeout: float = 10) -> None:
        """SIGKILL (works on a SIGSTOPped process too) and wait until the engine saw it exit."""
        try:
            self.api.kill(container.id, signal="SIGKILL")
            self.api.wait(container.id, timeout=timeout)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc):
                raise

    def events(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        """The engine's container events for this project; close() the result to stop it."""
        stream: Iterator[dict[str, Any]] = self.client.events(
            decode=True,
            since=since,
            filters={"type": "container", "label": self.label_filter},
        )
        return stream
