"""Settings → the desired containers and network (pure: no Docker, no I/O).

Each spec carries a hash of everything that needs a new container when it changes; the reconciler
compares it with the label on the running container, as docker-compose does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from supervisor import __version__
from supervisor.const import (
    LABEL_CONFIG_HASH,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_VERSION,
    NGINX_CONF_DIR_IN_CONTAINER,
    NGINX_TLS_PORT,
    REGISTRY_ALIAS,
    REGISTRY_DATA_IN_CONTAINER,
    REGISTRY_PORT,
    SERVICE_NGINX,
    SERVICE_REGISTRY,
)
from supervisor.paths import layout
from supervisor.settings import HostPort, Settings


def content_hash(fields: object) -> str:
    """A short digest of everything that needs a new container (or service update) when it changes."""
    payload = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def stack_labels(project: str, service: str, config_hash: str) -> dict[str, str]:
    return {
        LABEL_PROJECT: project,
        LABEL_SERVICE: service,
        LABEL_CONFIG_HASH: config_hash,
        LABEL_VERSION: __version__,
    }


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host: HostPort


@dataclass(frozen=True)
class ContainerSpec:
    service: str
    name: str
    image: str
    network: str
    aliases: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    memory: str = ""  # Docker's mem_limit, e.g. "512m"; empty: no limit
    # Least privilege: every capability dropped but these, no setuid gains, read-only root.
    cap_add: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    pids_limit: int = 256
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 10
    project: str = field(default="", compare=False)

    @property
    def config_hash(self) -> str:
        return content_hash(asdict(self))

    @property
    def labels(self) -> dict[str, str]:
        return stack_labels(self.project, self.service, self.config_hash)

    @property
    def port_bindings(self) -> dict[str, tuple[str, int]]:
        """In docker-py's create_host_config form: {"443/tcp": ("0.0.0.0", 5443)}."""
        return {f"{p.container_port}/tcp": (p.host.host, p.host.port) for p in self.ports}


@dataclass(frozen=True)
class StackSpec:
    project: str
    network: str
    containers: tuple[ContainerSpec, ...]

    def by_service(self, service: str) -> ContainerSpec:
        return next(c for c in self.containers if c.service == service)


def desired_stack(settings: Settings, http_secret: str) -> StackSpec:
    project = settings.name
    network = project
    publish = settings.registry_publish
    registry = ContainerSpec(
        service=SERVICE_REGISTRY,
        name=f"{project}-{SERVICE_REGISTRY}",
        image=settings.registry.image,
        network=network,
        aliases=(REGISTRY_ALIAS,),
        environment=(
            ("REGISTRY_HTTP_SECRET", http_secret),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", REGISTRY_DATA_IN_CONTAINER),
        ),
        mounts=(Mount(str(settings.data_path), REGISTRY_DATA_IN_CONTAINER, read_only=False),),
        ports=(PortBinding(REGISTRY_PORT, publish),) if publish else (),
        memory=settings.registry.memory,
        tmpfs=("/tmp",),
        project=project,
    )
    nginx = ContainerSpec(
        service=SERVICE_NGINX,
        name=f"{project}-{SERVICE_NGINX}",
        image=settings.proxy.image,
        network=network,
        mounts=(Mount(str(layout(settings).nginx), NGINX_CONF_DIR_IN_CONTAINER, read_only=True),),
        ports=(PortBinding(NGINX_TLS_PORT, settings.listen),),
        memory=settings.proxy.memory,
        # bind 443, switch to the nginx user, chown its temp dirs (created at start in the tmpfs)
        cap_add=("NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN"),
        # Debian's build keeps temp files in /var/lib/nginx, upstream's in /var/cache/nginx.
        tmpfs=("/var/lib/nginx", "/var/cache/nginx", "/run", "/tmp"),
        # nginx's graceful shutdown, as in the upstream image.
        stop_signal="SIGQUIT",
        project=project,
    )
    return StackSpec(project=project, network=network, containers=(registry, nginx))
