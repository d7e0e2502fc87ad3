"""Converge the engine on the desired stack: plan (pure), then execute (through engine.Engine).

Level-triggered: the plan only compares what is with what should be, so the same call serves the
first start, an adoption after the daemon was killed, a config reload and recovery after dockerd
restarted.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from supervisor.engine import Container, Engine, StaleContainer
from supervisor.specs import ContainerSpec, StackSpec

log = structlog.get_logger()


class Verb(enum.Enum):
    ADOPT = "adopt"  # running with the right config: leave it alone
    START = "start"  # right config, not running
    CREATE = "create"  # missing
    RECREATE = "recreate"  # config hash differs
    REMOVE = "remove"  # carries the project label but is not wanted (or is a duplicate)


@dataclass(frozen=True)
class Action:
    verb: Verb
    spec: ContainerSpec | None
    container: Container | None

    @property
    def touches_container(self) -> bool:
        return self.verb is not Verb.ADOPT


def plan(stack: StackSpec, actual: Sequence[Container]) -> list[Action]:
    """What to do, in order: removals first, then each service in start order."""
    by_name = {c.name: c for c in actual}
    wanted = {spec.name for spec in stack.containers}
    actions = [Action(Verb.REMOVE, None, c) for c in actual if c.name not in wanted]
    for spec in stack.containers:
        current = by_name.get(spec.name)
        if current is None:
            actions.append(Action(Verb.CREATE, spec, None))
        elif current.config_hash != spec.config_hash:
            actions.append(Action(Verb.RECREATE, spec, current))
        elif not current.running:
            actions.append(Action(Verb.START, spec, current))
        else:
            actions.append(Action(Verb.ADOPT, spec, current))
    return actions


_DONE = {
    Verb.START: "container started",
    Verb.CREATE: "container created",
    Verb.RECREATE: "container recreated",
}


@dataclass(frozen=True)
class Outcome:
    containers: dict[str, Container]  # service -> container after the change
    changed: frozenset[str]  # services whose container was created, recreated or started


def execute(
    engine: Engine, stack: StackSpec, actions: Sequence[Action], only: frozenset[str] | None = None
) -> Outcome:
    """Carry out the plan; with `only`, act on those services and leave the others as they are."""
    engine.ensure_network(stack.network)
    containers: dict[str, Container] = {}
    changed: set[str] = set()
    for action in actions:
        if only is not None and (action.spec is None or action.spec.service not in only):
            if action.spec is not None and action.container is not None:
                containers[action.spec.service] = action.container
            continue
        if action.verb is Verb.REMOVE:
            assert action.container is not None
            engine.remove(action.container)
            log.info("stray container removed", container=action.container.name)
            continue
        spec = action.spec
        assert spec is not None
        if action.verb is Verb.ADOPT:
            assert action.container is not None
            containers[spec.service] = action.container
            log.info("container adopted", service=spec.service, container=spec.name)
            continue
        if action.verb is Verb.RECREATE:
            assert action.container is not None
            engine.stop(action.container, spec.stop_timeout)
            engine.remove(action.container)
        if action.verb is Verb.START:
            assert action.container is not None
            container = _start_existing(engine, action.container, spec)
        else:
            container = _create_and_start(engine, spec)
        containers[spec.service] = engine.inspect(container.id) or container
        changed.add(spec.service)
        log.info(_DONE[action.verb], service=spec.service, container=spec.name)
    return Outcome(containers, frozenset(changed))


def _create_and_start(engine: Engine, spec: ContainerSpec) -> Container:
    container = engine.create(spec)
    try:
        engine.start(container, spec)
    except Exception:
        engine.remove(container)  # leave nothing half-made behind
        raise
    return container


def _start_existing(engine: Engine, container: Container, spec: ContainerSpec) -> Container:
    try:
        engine.start(container, spec)
    except StaleContainer:
        log.warning(
            "container cannot be started again, replacing it", service=spec.service, container=spec.name
        )
        engine.remove(container)
        return _create_and_start(engine, spec)
    return container
