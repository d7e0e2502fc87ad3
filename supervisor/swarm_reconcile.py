"""Converge the swarm on the desired services: plan (pure), then execute (through swarm.Swarm).

Level-triggered like reconcile.py. A service differs when its config-hash label does, or when the
fields we own were edited by hand (`docker service scale`, `update --image` ...): the plan then
sends our whole spec again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from supervisor.const import LABEL_CONFIG_HASH
from supervisor.swarm import Service, Swarm
from supervisor.swarm_specs import ServiceSpec, SwarmStack

log = structlog.get_logger()


class Verb(enum.Enum):
    KEEP = "keep"
    CREATE = "create"
    UPDATE = "update"
    REMOVE = "remove"


@dataclass(frozen=True)
class Action:
    verb: Verb
    spec: ServiceSpec | None
    service: Service | None
    reason: str = ""


def drift(spec: ServiceSpec, actual: dict[str, Any]) -> list[str]:
    """The fields we own that differ between our spec and the service's current one."""
    found = []
    labels = actual.get("Labels") or {}
    if labels.get(LABEL_CONFIG_HASH) != spec.config_hash:
        found.append("config")
    container = (actual.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    # The engine may pin the tag it resolved to a digest: compare the names.
    if str(container.get("Image", "")).split("@")[0] != spec.image.split("@")[0]:
        found.append("image")
    if sorted(container.get("Env") or []) != sorted(f"{k}={v}" for k, v in spec.environment):
        found.append("env")
    health = container.get("Healthcheck") or {}
    if tuple(health.get("Test") or ()) != spec.health.command:
        found.append("healthcheck")
    mode = actual.get("Mode") or {}
    if spec.replicas is None:
        if "Global" not in mode:
            found.append("mode")
    elif (mode.get("Replicated") or {}).get("Replicas") != spec.replicas:
        found.append("replicas")
    wanted_files = {f.name for f in spec.files}
    have_files = {c.get("ConfigName") for c in container.get("Configs") or []} | {
        s.get("SecretName") for s in container.get("Secrets") or []
    }
    if not wanted_files <= have_files:
        found.append("files")
    ports = {
        (p.get("PublishedPort"), p.get("TargetPort"))
        for p in (actual.get("EndpointSpec") or {}).get("Ports") or []
    }
    if ports != set(spec.published):
        found.append("ports")
    return found


def plan(stack: SwarmStack, actual: Sequence[Service]) -> list[Action]:
    by_name = {s.name: s for s in actual}
    wanted = {spec.name for spec in stack.services}
    actions = [Action(Verb.REMOVE, None, s) for s in actual if s.name not in wanted]
    for spec in stack.services:
        current = by_name.get(spec.name)
        if current is None:
            actions.append(Action(Verb.CREATE, spec, None))
            continue
        differs = drift(spec, current.spec)
        if differs:
            actions.append(Action(Verb.UPDATE, spec, current, ",".join(differs)))
        else:
            actions.append(Action(Verb.KEEP, spec, current))
    return actions


def execute(swarm: Swarm, stack: SwarmStack, actions: Sequence[Action]) -> frozenset[str]:
    """Carry out the plan; returns the services created or updated."""
    if not any(a.verb is not Verb.KEEP for a in actions):
        return frozenset()
    swarm.ensure_network(stack.network)
    file_ids = swarm.ensure_files(stack.files)
    changed = set()
    for action in actions:
        if action.verb is Verb.REMOVE:
            assert action.service is not None
            swarm.remove_service(action.service)
            log.info("stray service removed", swarm_service=action.service.name)
        elif action.verb is Verb.CREATE:
            assert action.spec is not None
            swarm.create_service(action.spec, file_ids)
            changed.add(action.spec.service)
            log.info("service created", service=action.spec.service, swarm_service=action.spec.name)
        elif action.verb is Verb.UPDATE:
            assert action.spec is not None and action.service is not None
            swarm.update_service(action.service, action.spec, file_ids)
            changed.add(action.spec.service)
            # A changed config is the admin's own rollout; anything else was edited by hand.
            event = (
                "service updated"
                if "config" in action.reason
                else "service drifted from the config, restored"
            )
            log.info(
                event, service=action.spec.service, swarm_service=action.spec.name, differs=action.reason
            )
    return frozenset(changed)
