"""The thin shell over a swarm manager: services, tasks, configs, secrets, the overlay network.

Like engine.py it decides nothing (swarm_reconcile.py does) and retries transient errors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.types
import structlog

from supervisor.const import LABEL_CONFIG_HASH, LABEL_PROJECT, LABEL_SERVICE, LABEL_SWARM_PROJECT
from supervisor.engine import ProjectClient, retrying
from supervisor.errors import UserError
from supervisor.swarm_specs import ServiceSpec, SwarmFile

log = structlog.get_logger()

NANO = 1_000_000_000
# Task states in swarm's order; a task past "running" is done for good.
ACTIVE_TASK_STATES = frozenset(
    {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
)


class NotAManager(UserError):
    pass


@dataclass(frozen=True)
class Service:
    """A view over `docker service inspect` output."""

    attrs: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.attrs["ID"])

    @property
    def version(self) -> int:
        return int(self.attrs["Version"]["Index"])

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.attrs.get("Spec") or {}
        return spec

    @property
    def name(self) -> str:
        return str(self.spec.get("Name", ""))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.get("Labels") or {})

    @property
    def service(self) -> str:
        return self.labels.get(LABEL_SERVICE, "")

    @property
    def config_hash(self) -> str:
        return self.labels.get(LABEL_CONFIG_HASH, "")

    @property
    def file_names(self) -> set[str]:
        """Configs and secrets its current and previous spec use (a rollback needs the latter)."""
        names = set()
        for spec in (self.spec, self.attrs.get("PreviousSpec") or {}):
            container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
            names |= {c.get("ConfigName", "") for c in container.get("Configs") or []}
            names |= {s.get("SecretName", "") for s in container.get("Secrets") or []}
        return names

    @property
    def update_state(self) -> str:
        return str((self.attrs.get("UpdateStatus") or {}).get("State") or "")

    @property
    def update_message(self) -> str:
        return str((self.attrs.get("UpdateStatus") or {}).get("Message") or "")


@dataclass(frozen=True)
class Task:
    attrs: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.attrs["ID"])

    @property
    def service_id(self) -> str:
        return str(self.attrs.get("ServiceID", ""))

    @property
    def node_id(self) -> str:
        return str(self.attrs.get("NodeID", ""))

    @property
    def slot(self) -> int:
        return int(self.attrs.get("Slot") or 0)

    @property
    def state(self) -> str:
        return str((self.attrs.get("Status") or {}).get("State", ""))

    @property
    def desired_state(self) -> str:
        return str(self.attrs.get("DesiredState", ""))

    @property
    def error(self) -> str:
        status = self.attrs.get("Status") or {}
        return str(status.get("Err") or status.get("Message") or "")

    @property
    def exit_code(self) -> int | None:
        code = ((self.attrs.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
        return None if code is None else int(code)

    @property
    def container_id(self) -> str:
        return str(((self.attrs.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or "")

    @property
    def image(self) -> str:
        return str(self.attrs["Spec"]["ContainerSpec"]["Image"]).split("@")[0]


class Swarm(ProjectClient):
    """Swarm operations for one project, each retried on transient errors."""

    @retrying()
    def manager_state(self) -> str:
        """ "manager", "worker" or "inactive" (this engine is in no swarm)."""
        swarm = self.api.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active":
            return "inactive"
        return "manager" if swarm.get("ControlAvailable") else "worker"

    def require_manager(self) -> None:
        state = self.manager_state()
        if state == "inactive":
            raise NotAManager(
                "mode = \"swarm\": this engine is in no swarm (run 'docker swarm init' or join one as a manager)"
            )
        if state == "worker":
            raise NotAManager('mode = "swarm": this node is a swarm worker; run regsupervisor on a manager')

    @retrying()
    def ensure_network(self, name: str) -> None:
        if not any(n["Name"] == name for n in self.api.networks(names=[name])):
            # Attachable: an admin (or a test's S3 stand-in) can join it with a plain container.
            self.api.create_network(
                name,
                driver="overlay",
                attachable=True,
                labels={LABEL_PROJECT: self.project},
                check_duplicate=True,
            )
            log.info("network created", network=name, driver="overlay")

    @retrying()
    def remove_network(self, name: str) -> None:
        for net in self.api.networks(names=[name]):
            if net["Name"] != name:
                continue
            try:
                self.api.remove_network(net["Id"])
                log.info("network removed", network=name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "active endpoints" not in str(exc):
                    raise
                # Someone attached a container of their own (the network is attachable).
                log.warning("network still in use by other containers, kept", network=name)

    @retrying()
    def leftovers(self, network: str) -> bool:
        """Whether anything of the project is left on the swarm: services, files, the network."""
        return bool(
            self.services()
            or self.file_ids()
            or any(n["Name"] == network for n in self.api.networks(names=[network]))
        )

    @retrying()
    def node_id(self) -> str:
        return str((self.api.info().get("Swarm") or {}).get("NodeID") or "")

    # --- configs and secrets -----------------------------------------------------------------

    @retrying()
    def file_ids(self) -> dict[str, str]:
        """Name -> ID of this project's configs and secrets."""
        found = self.api.configs(filters={"label": self.label_filter}) + self.api.secrets(
            filters={"label": self.label_filter}
        )
        return {item["Spec"]["Name"]: item["ID"] for item in found}

    @retrying()
    def ensure_files(self, files: Iterable[SwarmFile]) -> dict[str, str]:
        ids = self.file_ids()
        for item in files:
            if item.name in ids:
                continue
            create = self.api.create_secret if item.secret else self.api.create_config
            created = create(item.name, item.data, labels=item.labels)
            ids[item.name] = created["ID"]
            log.info("swarm secret created" if item.secret else "swarm config created", name=item.name)
        return ids

    @retrying()
    def secret_id(self, name: str) -> str:
        for secret in self.api.secrets(filters={"name": name}):
            if secret["Spec"]["Name"] == name:
                return str(secret["ID"])
        raise UserError(f"registry.storage.credentials_secret: no swarm secret named {name!r}")

    def prune_files(self, keep: set[str]) -> None:
        """Remove this project's configs/secrets nothing wants; those old tasks still use stay
        until a later pass."""
        for kind, listing, remove in (
            ("config", self.api.configs, self.api.remove_config),
            ("secret", self.api.secrets, self.api.remove_secret),
        ):
            for item in listing(filters={"label": self.label_filter}):
                name = item["Spec"]["Name"]
                if name in keep:
                    continue
                try:
                    remove(item["ID"])
                    log.info(f"swarm {kind} removed", name=name)
                except docker.errors.APIError as exc:
                    if "in use" not in str(exc) and not isinstance(exc, docker.errors.NotFound):
                        raise

    # --- services and tasks ------------------------------------------------------------------

    @retrying()
    def services(self) -> list[Service]:
        return [Service(s) for s in self.api.services(filters={"label": self.label_filter})]

    @retrying()
    def tasks(self) -> list[Task]:
        services = self.services()
        if not services:
            return []
        return [Task(t) for t in self.api.tasks(filters={"service": [s.id for s in services]})]

    @retrying()
    def node_names(self) -> dict[str, str]:
        return {n["ID"]: n.get("Description", {}).get("Hostname", n["ID"][:12]) for n in self.api.nodes()}

    @retrying()
    def create_service(self, spec: ServiceSpec, file_ids: dict[str, str]) -> None:
        self.api.create_service(name=spec.name, labels=spec.labels, **self._service_body(spec, file_ids))

    @retrying()
    def update_service(self, current: Service, spec: ServiceSpec, file_ids: dict[str, str]) -> None:
        # The full spec is sent (nothing merged from the current one): drift is overwritten.
        fresh = Service(self.api.inspect_service(current.id))
        self.api.update_service(
            fresh.id, fresh.version, name=spec.name, labels=spec.labels, **self._service_body(spec, file_ids)
        )

    @retrying()
    def remove_service(self, service: Service) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_service(service.id)

    def remove_all(self, network: str, timeout: float = 60) -> list[str]:
        """Remove the services, wait for their local task containers to go (they hold the
        published port), then the configs, secrets and network."""
        services = self.services()
        for service in services:
            self.remove_service(service)
            log.info("service removed", swarm_service=service.name)
        deadline = time.monotonic() + timeout
        label = f"{LABEL_SWARM_PROJECT}={self.project}"
        while self.api.containers(all=True, filters={"label": label}) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.prune_files(set())
        self.remove_network(network)
        return [s.name for s in services]

    def events(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        """Service events, and container events of the project's tasks; close() to stop."""
        stream: Iterator[dict[str, Any]] = self.client.events(
            decode=True, since=since, filters={"type": ["service", "container"]}
        )
        return stream

    def _service_body(self, spec: ServiceSpec, file_ids: dict[str, str]) -> dict[str, Any]:
        configs, secrets = [], []
        for item in spec.files:
            ref_args = (file_ids[item.name], item.name)
            ref_kwargs = {"filename": item.target, "uid": "0", "gid": item.gid, "mode": item.mode}
            if item.secret:
                secrets.append(docker.types.SecretReference(*ref_args, **ref_kwargs))
            else:
                configs.append(docker.types.ConfigReference(*ref_args, **ref_kwargs))
        for name, target in spec.external_secrets:
            secrets.append(
                docker.types.SecretReference(self.secret_id(name), name, filename=target, mode=0o400)
            )
        health = spec.health
        container = docker.types.ContainerSpec(
            image=spec.image,
            env=[f"{k}={v}" for k, v in spec.environment],
            labels={LABEL_SWARM_PROJECT: self.project, LABEL_SERVICE: spec.service},
            mounts=[docker.types.Mount(target, None, type="tmpfs") for target in spec.tmpfs],
            configs=configs,
            secrets=secrets,
            read_only=True,
            stop_signal=spec.stop_signal,
            stop_grace_period=int(spec.stop_grace * NANO),
            healthcheck=docker.types.Healthcheck(
                test=list(health.command),
                interval=int(health.interval * NANO),
                timeout=int(health.timeout * NANO),
                retries=health.retries,
                start_period=int(health.start_period * NANO),
            ),
            cap_drop=["ALL"],
            cap_add=list(spec.cap_add) or None,
        )
        restart = spec.restart
        task_template = docker.types.TaskTemplate(
            container_spec=container,
            resources=docker.types.Resources(mem_limit=_bytes(spec.memory)) if spec.memory else None,
            restart_policy=docker.types.RestartPolicy(
                condition="any",
                delay=int(restart.delay * NANO),
                max_attempts=restart.max_attempts,
                window=int(restart.window * NANO),
            ),
            networks=[docker.types.NetworkAttachmentConfig(spec.network, aliases=list(spec.aliases) or None)],
        )
        mode = (
            docker.types.ServiceMode("global")
            if spec.replicas is None
            else docker.types.ServiceMode("replicated", replicas=spec.replicas)
        )
        # Health checks decide when a new task counts as up; give them their start period.
        monitor = int((health.start_period + health.interval * (health.retries + 1)) * NANO)
        update = docker.types.UpdateConfig(
            parallelism=1, failure_action="rollback", monitor=monitor, order=spec.update_order
        )
        rollback = docker.types.RollbackConfig(
            parallelism=1, failure_action="pause", monitor=monitor, order=spec.update_order
        )
        return {
            "task_template": task_template,
            "mode": mode,
            "update_config": update,
            "rollback_config": rollback,
            "endpoint_spec": docker.types.EndpointSpec(
                mode=spec.endpoint_mode,
                ports={published: (target, "tcp", "host") for published, target in spec.published},
            ),
        }


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def replica_counts(
    services: list[Service], tasks: list[Task], nodes: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Per service: tasks running of desired, per node, and the state of the last update."""
    result: dict[str, dict[str, Any]] = {}
    for service in services:
        mine = [t for t in tasks if t.service_id == service.id]
        running = [t for t in mine if t.state == "running" and t.desired_state == "running"]
        replicated = (service.spec.get("Mode") or {}).get("Replicated")
        # A global service wants one task on each node it placed one on.
        desired = (
            int(replicated.get("Replicas", 0))
            if replicated
            else len({t.node_id for t in mine if t.desired_state == "running"}) or len(nodes)
        )
        per_node: dict[str, int] = {}
        for task in running:
            node = nodes.get(task.node_id, task.node_id[:12])
            per_node[node] = per_node.get(node, 0) + 1
        result[service.service] = {
            "swarm_service": service.name,
            "desired": desired,
            "running": len(running),
            "starting": sum(1 for t in mine if t.state in ACTIVE_TASK_STATES and t.state != "running"),
            "nodes": dict(sorted(per_node.items())),
            "update": service.update_state or None,
        }
    return result
