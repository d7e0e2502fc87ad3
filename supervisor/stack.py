"""One converge pass: files on disk, images present, containers matching the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from supervisor import paths, reconcile, specs, statefiles
from supervisor.const import SERVICE_NGINX, SERVICE_ORDER, SERVICE_REGISTRY
from supervisor.engine import Container, Engine
from supervisor.settings import Settings

log = structlog.get_logger()


@dataclass(frozen=True)
class Converged:
    stack: specs.StackSpec
    containers: dict[str, Container]
    changed: frozenset[str]


def prepare_files(settings: Settings) -> statefiles.Prepared:
    prepared = statefiles.prepare(settings)
    if prepared.generated_ca:
        log.info(
            "clients trust the generated CA from this file",
            ca=str(prepared.generated_ca),
            install_as=f"/etc/docker/certs.d/{settings.proxy.server_name}:{settings.listen.port}/ca.crt",
        )
    for bad in prepared.users.malformed:
        log.warning(
            "malformed line in user file ignored",
            file=str(paths.layout(settings).htpasswd),
            line=bad.line_number,
            reason=bad.reason,
        )
    if not prepared.users.hashes:
        log.warning("no registry users yet: add one with 'regsupervisor user add NAME'")
    if settings.tls.key and Path(settings.tls.key).stat().st_mode & 0o077:
        log.warning(
            "tls.key is readable by other users: restrict it",
            key=settings.tls.key,
            fix=f"chmod 600 {settings.tls.key}",
        )
    publish = settings.registry_publish
    if publish and not publish.is_loopback:
        log.warning(
            "registry port published beyond loopback: it has no authentication of its own",
            publish=str(publish),
        )
    return prepared


def converge(
    settings: Settings,
    engine: Engine,
    prepared: statefiles.Prepared,
    only: frozenset[str] | None = None,
) -> Converged:
    """Make the containers match the settings. `only` limits the changes to those services: a
    respawn must not restart the other service as a side effect."""
    stack = specs.desired_stack(settings, prepared.http_secret)
    for spec in stack.containers:
        if only is None or spec.service in only:
            engine.ensure_image(spec.image, settings.docker.pull)
    actions = reconcile.plan(stack, engine.containers())
    outcome = reconcile.execute(engine, stack, actions, only)
    nginx = outcome.containers.get(SERVICE_NGINX)
    # nginx resolves "registry" and reads its files only when it starts: a kept nginx must reload
    # after the registry got a new container or its own files changed.
    if (
        nginx is not None
        and nginx.running
        and SERVICE_NGINX not in outcome.changed
        and (SERVICE_REGISTRY in outcome.changed or prepared.nginx_files_changed)
    ):
        reload_nginx(engine, nginx)
    return Converged(stack, outcome.containers, outcome.changed)


def reload_nginx(engine: Engine, nginx: Container) -> None:
    engine.signal(nginx, "SIGHUP")
    log.info("nginx reloaded", service=SERVICE_NGINX, container=nginx.name)


def down(engine: Engine, network: str) -> list[str]:
    """Stop nginx, then the registry (reverse start order), remove them and the network."""
    containers = engine.containers()
    order = {service: i for i, service in enumerate(reversed(SERVICE_ORDER))}
    removed = []
    for container in sorted(containers, key=lambda c: order.get(c.service, -1)):
        engine.stop(container, timeout=10)
        engine.remove(container)
        log.info("container removed", service=container.service, container=container.name)
        removed.append(container.name)
    engine.remove_network(network)
    return removed
