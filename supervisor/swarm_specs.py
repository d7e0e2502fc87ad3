"""Settings → the desired swarm services, configs and secrets (pure: no Docker, no I/O).

The same settings as standalone mode, mapped onto swarm's own supervision: Upstart's `respawn limit
COUNT INTERVAL` becomes the restart policy's max_attempts/window, the daemon's probes become health
checks swarm acts on, and files become configs/secrets whose names carry a digest of their content
(swarm configs are immutable: a change is a new name and a rolling update).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from supervisor.const import (
    HTPASSWD_FILE,
    LABEL_PROJECT,
    LABEL_SERVICE,
    NGINX_ALIVE_PATH,
    NGINX_CERT_FILE,
    NGINX_CONF_DIR_IN_CONTAINER,
    NGINX_CONF_FILE,
    NGINX_GID,
    NGINX_KEY_FILE,
    NGINX_STATUS_PORT,
    NGINX_TLS_PORT,
    REGISTRY_ALIAS,
    REGISTRY_PORT,
    SERVICE_NGINX,
    SERVICE_REGISTRY,
)
from supervisor.settings import Settings
from supervisor.specs import content_hash, stack_labels

REGISTRY_CONFIG_IN_CONTAINER = "/etc/docker/registry/config.yml"
AWS_CREDENTIALS_IN_CONTAINER = "/run/secrets/aws-credentials"
# The registry finishes requests in flight after SIGTERM (distribution's http.draintimeout) and
# swarm waits a little longer before SIGKILL: a rolling update does not cut pulls short.
REGISTRY_DRAIN_SECONDS = 10
STOP_GRACE_SECONDS = 15


@dataclass(frozen=True)
class SwarmFile:
    """A file delivered to tasks as a swarm config (or secret, when `secret`)."""

    project: str
    role: str  # what it is: "nginx-conf", "tls-key", ...
    data: bytes = field(repr=False)
    target: str = ""  # absolute path inside the container
    secret: bool = False
    mode: int = 0o444
    gid: str = "0"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"{self.project}-{self.role}-{self.digest}"

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_PROJECT: self.project, LABEL_SERVICE: self.role}


@dataclass(frozen=True)
class HealthCheck:
    command: tuple[str, ...]
    interval: float
    timeout: float
    retries: int
    start_period: float


@dataclass(frozen=True)
class RestartPolicy:
    delay: float
    max_attempts: int  # 0: no limit
    window: float


@dataclass(frozen=True)
class ServiceSpec:
    service: str
    name: str
    image: str
    network: str
    replicas: int | None  # None: global (one task per node)
    health: HealthCheck
    restart: RestartPolicy
    update_order: Literal["start-first", "stop-first"]
    aliases: tuple[str, ...] = ()
    endpoint_mode: Literal["vip", "dnsrr"] = "dnsrr"
    environment: tuple[tuple[str, str], ...] = ()
    files: tuple[SwarmFile, ...] = ()
    external_secrets: tuple[tuple[str, str], ...] = ()  # (existing secret name, target)
    published: tuple[tuple[int, int], ...] = ()  # (port on each node, container port), host mode
    memory: str = ""
    cap_add: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    stop_signal: str = "SIGTERM"
    stop_grace: float = STOP_GRACE_SECONDS
    project: str = field(default="", compare=False)

    @property
    def config_hash(self) -> str:
        fields = asdict(self)
        # The files' content enters through their names (digests), never the hash input itself.
        fields["files"] = [(f.name, f.target, f.mode, f.gid) for f in self.files]
        return content_hash(fields)

    @property
    def labels(self) -> dict[str, str]:
        return stack_labels(self.project, self.service, self.config_hash)


@dataclass(frozen=True)
class SwarmStack:
    project: str
    network: str
    services: tuple[ServiceSpec, ...]

    @property
    def files(self) -> tuple[SwarmFile, ...]:
        return tuple({f.name: f for s in self.services for f in s.files}.values())

    def by_service(self, service: str) -> ServiceSpec:
        return next(s for s in self.services if s.service == service)


@dataclass(frozen=True)
class NginxFiles:
    conf: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    htpasswd: bytes = field(repr=False)


@dataclass(frozen=True)
class StorageCredentials:
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)


def service_name(project: str, service: str) -> str:
    return f"{project}-{service}"


def network_name(project: str) -> str:
    # Not the standalone bridge's name: switching modes must not find the other mode's network.
    return f"{project}-swarm"


def registry_config(settings: Settings, http_secret: str, credentials: StorageCredentials) -> bytes:
    """distribution's config.yml (JSON is YAML) with shared storage and the shared HTTP secret."""
    storage = settings.registry.storage
    s3: dict[str, object] = {"bucket": storage.bucket, "region": storage.region}
    if storage.endpoint:
        s3["regionendpoint"] = storage.endpoint.rstrip("/")
        s3["secure"] = storage.endpoint.startswith("https://")
    if storage.path_style:
        s3["forcepathstyle"] = True
    if storage.root_directory:
        s3["rootdirectory"] = storage.root_directory
    if credentials.access_key:
        s3["accesskey"] = credentials.access_key
        s3["secretkey"] = credentials.secret_key
    config = {
        "version": "0.1",
        "log": {"level": "info", "fields": {"service": "registry"}},
        "http": {
            "addr": f":{REGISTRY_PORT}",
            "secret": http_secret,
            "draintimeout": f"{REGISTRY_DRAIN_SECONDS}s",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "storage": {
            "s3": s3,
            # Clients reach blobs through nginx only: no redirects to the bucket's own address.
            "redirect": {"disable": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        # Unhealthy while the bucket is unreachable: swarm's health check then sees it.
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    return json.dumps(config, indent=1, sort_keys=True).encode()


def _http_check(settings: Settings, url: str) -> HealthCheck:
    # Runs inside the task: busybox/Alpine images have wget, Debian-based ones may have curl.
    probe = f"wget -q -O /dev/null {url} || curl -fsS -o /dev/null {url}"
    health = settings.health
    return HealthCheck(
        ("CMD-SHELL", probe), health.interval, health.timeout, health.failures, health.start_period
    )


def desired_swarm(
    settings: Settings, http_secret: str, nginx: NginxFiles, credentials: StorageCredentials
) -> SwarmStack:
    project = settings.name
    network = network_name(project)
    respawn = settings.respawn
    # Upstart's limit 0 or interval 0 means no limit; swarm's max_attempts 0 does.
    unlimited = respawn.limit == 0 or respawn.interval == 0
    restart = RestartPolicy(respawn.delay, 0 if unlimited else respawn.limit, respawn.interval)
    registry_files = (
        SwarmFile(
            project,
            "registry-config",
            registry_config(settings, http_secret, credentials),
            REGISTRY_CONFIG_IN_CONTAINER,
            secret=True,
            mode=0o400,
        ),
    )
    external = settings.registry.storage.credentials_secret
    registry = ServiceSpec(
        service=SERVICE_REGISTRY,
        name=service_name(project, SERVICE_REGISTRY),
        image=settings.registry.image,
        network=network,
        replicas=settings.registry.replicas,
        health=_http_check(settings, f"http://127.0.0.1:{REGISTRY_PORT}/"),
        restart=restart,
        # No published port: the new task starts before the old one stops.
        update_order="start-first",
        aliases=(REGISTRY_ALIAS,),
        # No IPVS here (and often not on small hosts): nginx resolves the tasks itself.
        endpoint_mode="dnsrr",
        environment=(("AWS_SHARED_CREDENTIALS_FILE", AWS_CREDENTIALS_IN_CONTAINER),) if external else (),
        files=registry_files,
        external_secrets=((external, AWS_CREDENTIALS_IN_CONTAINER),) if external else (),
        memory=settings.registry.memory,
        tmpfs=("/tmp",),
        project=project,
    )
    conf_dir = NGINX_CONF_DIR_IN_CONTAINER
    nginx_files = (
        SwarmFile(project, "nginx-conf", nginx.conf, f"{conf_dir}/{NGINX_CONF_FILE}"),
        SwarmFile(project, "tls-cert", nginx.cert, f"{conf_dir}/{NGINX_CERT_FILE}"),
        SwarmFile(project, "tls-key", nginx.key, f"{conf_dir}/{NGINX_KEY_FILE}", secret=True, mode=0o400),
        SwarmFile(
            project,
            "htpasswd",
            # swarm refuses empty secrets; nginx skips comment lines
            nginx.htpasswd or b"# no users yet: regsupervisor user add NAME\n",
            f"{conf_dir}/{HTPASSWD_FILE}",
            secret=True,
            mode=0o440,
            gid=str(NGINX_GID),
        ),
    )
    proxy = ServiceSpec(
        service=SERVICE_NGINX,
        name=service_name(project, SERVICE_NGINX),
        image=settings.proxy.image,
        network=network,
        replicas=None,
        health=_http_check(settings, f"http://127.0.0.1:{NGINX_STATUS_PORT}{NGINX_ALIVE_PATH}"),
        restart=restart,
        # Its port is taken on the node until the old task stops.
        update_order="stop-first",
        endpoint_mode="dnsrr",
        files=nginx_files,
        published=((settings.listen.port, NGINX_TLS_PORT),),
        memory=settings.proxy.memory,
        cap_add=("NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN"),
        tmpfs=("/var/lib/nginx", "/var/cache/nginx", "/run", "/tmp"),
        stop_signal="SIGQUIT",
        project=project,
    )
    return SwarmStack(project=project, network=network, services=(registry, proxy))
