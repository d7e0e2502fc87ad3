"""The long-running daemon: converge, then supervise until SIGTERM/SIGINT.

Inputs (engine events, probe results, signals) arrive on one queue and are handled one at a time by
the main loop, so all state lives in one thread. The loop wakes only for input or a deadline (probe
results, backoff ends, periodic resync, watchdog): no busy polling.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker.errors
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from supervisor import paths, probes, stack, statefiles
from supervisor.const import (
    EXIT_OK,
    EXIT_RESPAWN_LIMIT,
    NGINX_STATUS_PORT,
    NGINX_TLS_PORT,
    REGISTRY_PORT,
    SERVICE_NGINX,
    SERVICE_ORDER,
    SERVICE_REGISTRY,
)
from supervisor.engine import RETRIED_ERRORS, Container, Engine, connect, describe_failure
from supervisor.errors import UserError
from supervisor.fsutil import atomic_write
from supervisor.notify import Notifier
from supervisor.service import Decision, ServiceState, State
from supervisor.settings import HealthSettings, Settings, load_settings, reload_settings
from supervisor.swarm import Swarm
from supervisor.swarm_specs import network_name

log = structlog.get_logger()

# Level-triggered safety net: compare with the engine even when no event arrived.
RESYNC_INTERVAL = 30.0
RETRY_AFTER_ERROR = 2.0
RENEWAL_CHECK_INTERVAL = 3600.0


@dataclass(frozen=True)
class EngineEvent:
    event: dict[str, Any]


@dataclass(frozen=True)
class EngineLost:
    error: str


@dataclass(frozen=True)
class EngineBack:
    pass


@dataclass(frozen=True)
class Probed:
    service: str
    container_id: str
    result: probes.ProbeResult
    # Measured by the prober before a failure that could get the container killed: whether it
    # used CPU meanwhile (busy, not hung).
    busy: bool = False


@dataclass(frozen=True)
class Signalled:
    signum: int


class StreamEnded(Exception):
    pass


class EventWatcher(threading.Thread):
    """Feeds the engine's container events into the inbox; reports losing and regaining it."""

    def __init__(
        self, open_stream: Callable[[int | None], Iterator[dict[str, Any]]], inbox: queue.SimpleQueue[object]
    ) -> None:
        super().__init__(name="docker-events", daemon=True)
        self.open_stream, self.inbox = open_stream, inbox
        self.stopped = threading.Event()
        self.subscribed = threading.Event()
        self.lost = False
        self._stream: Any = None

    def run(self) -> None:
        reconnect = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=lambda _: self.stopped.is_set(),
            sleep=self._sleep,
            before_sleep=self._report_lost,
            reraise=False,
        )
        try:
            for attempt in reconnect:
                with attempt:
                    self._watch()
        except Exception:
            pass  # stopped while the engine was away

    def _sleep(self, seconds: float) -> None:
        self.stopped.wait(seconds)

    def _watch(self) -> None:
        self._stream = self.open_stream(int(time.time()) - 1 if self.lost else None)
        self.subscribed.set()
        if self.lost:
            self.lost = False
            self.inbox.put(EngineBack())
        for event in self._stream:
            self.inbox.put(EngineEvent(event))
        if not self.stopped.is_set():
            raise StreamEnded("the engine closed the event stream")

    def _report_lost(self, state: RetryCallState) -> None:
        if not self.lost and not self.stopped.is_set():
            self.lost = True
            error = state.outcome.exception() if state.outcome else None
            self.inbox.put(EngineLost(str(error).splitlines()[0] if str(error) else repr(error)))

    def close(self) -> None:
        self.stopped.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


@dataclass(frozen=True)
class Target:
    container_id: str
    host: str
    port: int


class Prober(threading.Thread):
    """Probes one service at a fixed rate (start to start) and reports to the inbox."""

    def __init__(
        self, service: str, inbox: queue.SimpleQueue[object], health: HealthSettings, engine: Engine
    ) -> None:
        super().__init__(name=f"probe-{service}", daemon=True)
        self.service, self.inbox, self.health, self.engine = service, inbox, health, engine
        self.failures_in_row = 0
        self.last_container_id = ""
        self.target: Target | None = None
        self.token = ""
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic() + self.health.interval
        while not self.stopped.wait(max(0.0, next_at - time.monotonic())):
            started = time.monotonic()
            next_at = max(next_at + self.health.interval, started)
            target = self.target
            if target is not None:
                result = (
                    probes.probe_registry(target.host, target.port, self.health.timeout)
                    if self.service == SERVICE_REGISTRY
                    else probes.probe_proxy(target.host, target.port, self.health.timeout, self.token)
                )
                if result.ok or target.container_id != self.last_container_id:
                    self.failures_in_row = 0
                self.last_container_id = target.container_id
                self.failures_in_row += 0 if result.ok else 1
                # The CPU check takes half a second: here, not in the main loop.
                busy = self.failures_in_row >= self.health.failures and self.engine.busy(target.container_id)
                self.inbox.put(Probed(self.service, target.container_id, result, busy))
                if not result.ok:
                    # Confirm a failure at once rather than an interval later: a hang is then
                    # caught in about failures x timeout (a busy container is told apart by
                    # its CPU use before anything is killed: Daemon.on_probe).
                    next_at = max(time.monotonic(), started + self.health.timeout)


class Daemon:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.notifier = Notifier()
        self.services = {
            name: ServiceState(name, settings.respawn, settings.health) for name in SERVICE_ORDER
        }
        self.containers: dict[str, Container] = {}
        self.exit_code: int | None = None
        self.start_overhead = 0.0
        self.next_renewal: float | None = None
        self.engine_up = True
        self.ready_pending = True
        self.next_resync = 0.0
        self.next_watchdog = 0.0
        self.last_error = ""
        self.started_wall = time.time()
        self.engine: Engine
        self.prepared: statefiles.Prepared
        self.watcher: EventWatcher
        self.probers: dict[str, Prober] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda s, _f: self.inbox.put(Signalled(s)))
        self.prepared = stack.prepare_files(self.settings)
        self.engine = Engine(connect(self.settings.docker.host), self.settings.name)
        remove_swarm_services(self.engine.client, self.settings.name)
        host, project = self.settings.docker.host, self.settings.name
        self.watcher = EventWatcher(lambda since: Engine(connect(host), project).events(since), self.inbox)
        self.watcher.start()
        self.watcher.subscribed.wait(10)
        self.converge(self.prepared)
        self.schedule_renewal()
        self.probers = {
            name: Prober(name, self.inbox, self.settings.health, Engine(connect(host), project))
            for name in SERVICE_ORDER
        }
        self.refresh_probe_targets()
        for prober in self.probers.values():
            prober.start()
        log.info("supervising", project=self.settings.name, config=str(self.config_path))
        try:
            while self.exit_code is None:
                self.step()
        finally:
            self.stop_probes()
            self.watcher.close()
        return self.exit_code

    def step(self) -> None:
        timeout = self.seconds_to_next_deadline()
        try:
            item: object | None = self.inbox.get(timeout=timeout)
        except queue.Empty:
            item = None
        try:
            if item is not None:
                self.handle(item)
            self.on_timers()
        except RETRIED_ERRORS as exc:
            self.report_error(describe_failure(exc))

    def seconds_to_next_deadline(self) -> float:
        now, clock = time.monotonic(), self.clock()
        waits = [self.next_resync - now]
        if self.next_renewal is not None:
            waits.append(self.next_renewal - now)
        waits += [s.backoff_until - clock for s in self.services.values() if s.backoff_until is not None]
        if self.notifier.watchdog_interval:
            waits.append(self.next_watchdog - now)
        return max(0.0, min(waits))

    def report_error(self, message: str) -> None:
        # A permanent error is reported once; the periodic resync keeps retrying quietly.
        if message != self.last_error:
            log.error("action failed, will retry", error=message)
            self.last_error = message
        self.next_resync = time.monotonic() + RETRY_AFTER_ERROR

    # --- inputs ------------------------------------------------------------------------------

    def handle(self, item: object) -> None:
        if isinstance(item, Signalled):
            self.on_signal(item.signum)
        elif isinstance(item, EngineEvent):
            self.on_event(item.event)
        elif isinstance(item, Probed):
            self.on_probe(item)
        elif isinstance(item, EngineLost):
            if self.engine_up:
                log.error("lost the Docker engine, reconnecting", error=item.error)
            self.engine_up = False
            self.notifier.status("Docker engine unreachable, reconnecting")
        elif isinstance(item, EngineBack):
            log.info("Docker engine reachable again, reconverging")
            self.engine_up = True
            self.recover_after_engine_loss()

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
            return
        log.info("stopping", signal=signal.Signals(signum).name)
        self.shutdown()
        self.exit_code = EXIT_OK

    def service_of(self, container_id: str) -> str | None:
        for service, container in self.containers.items():
            if container.id == container_id:
                return service
        return None

    def on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        container_id = str(actor.get("ID") or event.get("id") or "")
        service = self.service_of(container_id)
        attributes = actor.get("Attributes") or {}
        if action.startswith(("exec_", "health_status")):
            log.debug("container event", action=action, service=service)
            return
        if service is None or not self.engine_up:
            return
        name = self.containers[service].name
        if action == "oom":
            log.warning("container ran out of memory", service=service, container=name)
            self.services[service].last_problem = "out of memory"
        elif action in ("die", "destroy"):
            current = self.engine.inspect(container_id)
            if current is not None and current.running:
                return  # already running again (our own kill for a hang, or a quick resync)
            exit_code = current.exit_code if current else int(attributes.get("exitCode", -1) or -1)
            oom = bool(current and current.oom_killed)
            reason = "container removed" if current is None else f"exited with code {exit_code}"
            if oom:
                reason += " (killed for lack of memory)"
            log.warning(
                "container died",
                service=service,
                container=name,
                exit_code=exit_code,
                reason=reason,
            )
            self.on_exit(service, exit_code, reason)

    def nginx_waits_for_registry(self) -> bool:
        return self.services[SERVICE_REGISTRY].state is not State.RUNNING

    def on_exit(self, service: str, exit_code: int, reason: str) -> None:
        # nginx cannot start while "registry" does not resolve: rather than respawning it into a
        # crash loop of its own, start it once the registry answers again.
        if service == SERVICE_NGINX and self.nginx_waits_for_registry():
            log.warning("nginx waits for the registry", service=service, exit_code=exit_code)
            self.services[service].stopped(self.clock())
            self.publish_status()
            return
        self.decide(service, self.services[service].exited(self.clock(), exit_code, reason))

    def start_waiting_nginx(self) -> None:
        nginx = self.services[SERVICE_NGINX]
        if nginx.state is State.STOPPED and not self.nginx_waits_for_registry() and self.exit_code is None:
            log.info("registry answers again, starting nginx", service=SERVICE_NGINX)
            self.converge(self.prepared, only=frozenset({SERVICE_NGINX}))

    def on_probe(self, probed: Probed) -> None:
        current = self.containers.get(probed.service)
        if not self.engine_up or current is None or current.id != probed.container_id:
            return
        state = self.services[probed.service]
        before = state.state
        if (
            not probed.result.ok
            and state.state is State.RUNNING
            and state.failed_probes + 1 >= state.health.failures
            and probed.busy
        ):
            # Too busy to answer (a burst of big pulls on a small host), not hung: killing it
            # would cut every transfer in flight. A stopped or deadlocked process uses no CPU.
            log.warning(
                "probe failed but the container is busy, not hung: kept",
                service=probed.service,
                container=current.name,
                detail=probed.result.detail,
            )
            state.failed_probes = 0
            return
        decision = state.probed(self.clock(), probed.result.ok, probed.result.detail)
        if not probed.result.ok and state.failed_probes:
            log.warning(
                "probe failed",
                service=probed.service,
                container=current.name,
                failures=state.failed_probes,
                detail=probed.result.detail,
            )
        if decision is Decision.RESPAWN or decision is Decision.WAIT:
            log.warning("container hung, killing it", service=probed.service, container=current.name)
            self.engine.kill_and_wait(current)
        self.decide(probed.service, decision)
        if state.state is not before:
            self.publish_status()
            if probed.service == SERVICE_REGISTRY:
                self.start_waiting_nginx()
        if self.ready_pending:
            self.check_ready()

    def schedule_renewal(self) -> None:
        due = statefiles.renewal_due_at(self.settings, self.prepared)
        if due is None:
            self.next_renewal = None
            return
        seconds = (due - dt.datetime.now(dt.UTC)).total_seconds()
        # Checked at least hourly: the wall clock may jump (suspend, NTP) under the monotonic one.
        self.next_renewal = time.monotonic() + max(0.0, min(seconds, RENEWAL_CHECK_INTERVAL))

    def renew_certificate(self) -> None:
        prepared = stack.prepare_files(self.settings)
        self.prepared = replace(prepared, nginx_files_changed=False)
        nginx = self.containers.get(SERVICE_NGINX)
        if prepared.nginx_files_changed and nginx is not None:
            log.info("server certificate renewed", not_after=prepared.cert_not_after.isoformat())
            # A graceful reload: old workers finish their transfers with the old certificate.
            stack.reload_nginx(self.engine, nginx)
        self.schedule_renewal()

    def on_timers(self) -> None:
        now = time.monotonic()
        if self.next_renewal is not None and now >= self.next_renewal:
            self.renew_certificate()
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + self.notifier.watchdog_interval
        for service, state in self.services.items():
            if state.backoff_over(self.clock()):
                self.respawn(service)
        if now >= self.next_resync:
            self.next_resync = now + RESYNC_INTERVAL
            if self.engine_up:
                self.resync()

    # --- decisions and actions ---------------------------------------------------------------

    def decide(self, service: str, decision: Decision) -> None:
        state = self.services[service]
        if decision is Decision.RESPAWN:
            self.respawn(service)
        elif decision is Decision.WAIT:
            log.info("respawn delayed", service=service, seconds=round(state.backoff.current, 2))
            self.publish_status()
        elif decision is Decision.GIVE_UP:
            log.error(
                f"{service} respawning too fast, stopped",
                service=service,
                respawns=state.limit.count,
                interval=self.settings.respawn.interval,
                last_problem=state.last_problem,
            )
            self.shutdown(force=True)
            self.exit_code = EXIT_RESPAWN_LIMIT

    def respawn(self, service: str) -> None:
        state = self.services[service]
        log.info(
            "respawning",
            service=service,
            container=self.containers[service].name,
            respawns_in_window=state.respawns_in_window(self.clock()),
            reason=state.last_problem,
        )
        self.converge(self.prepared, only=frozenset({service}))

    def clock(self) -> float:
        """Monotonic time less the time spent (re)starting containers, for the service states.

        Upstart respawns with a fork and an exec, so its `respawn limit 10 5` counts crashes within
        five seconds of the job's own run time. A container start costs ~0.4 s here; on the wall
        clock a container that exits at once would then never trip the limit.
        """
        return time.monotonic() - self.start_overhead

    def converge(self, prepared: statefiles.Prepared, only: frozenset[str] | None = None) -> None:
        began = time.monotonic()
        try:
            self._converge(prepared, only)
        finally:
            self.start_overhead += time.monotonic() - began

    def _converge(self, prepared: statefiles.Prepared, only: frozenset[str] | None) -> None:
        result = stack.converge(self.settings, self.engine, prepared, only)
        # Files were reloaded into nginx if they changed: later passes need not do it again.
        self.prepared = replace(prepared, nginx_files_changed=False)
        now = self.clock()
        for service, container in result.containers.items():
            self.containers[service] = container
            state = self.services[service]
            if service in result.changed or state.state in (State.STOPPED, State.BACKOFF):
                state.started(now)
        self.last_error = ""
        self.refresh_probe_targets()
        self.publish_status()

    def resync(self) -> None:
        """Treat any supervised container found not running as an exit the events missed."""
        actual = {c.service: c for c in self.engine.containers()}
        for service, state in self.services.items():
            if state.state not in (State.STARTING, State.RUNNING, State.STOPPED):
                continue
            container = actual.get(service)
            if service == SERVICE_NGINX and self.nginx_waits_for_registry():
                continue
            if state.state is State.STOPPED or (container is None and service not in self.containers):
                self.converge(self.prepared)
                return
            if container is None or not container.running:
                code = container.exit_code if container else -1
                log.warning("container found not running", service=service, exit_code=code)
                self.on_exit(service, code, "found not running")
                return

    def recover_after_engine_loss(self) -> None:
        # dockerd restarts stop every container: bring them back without counting respawns.
        for state in self.services.values():
            state.stopped(self.clock())
        self.converge(self.prepared)
        self.ready_pending = True

    def stop_probes(self) -> None:
        for prober in self.probers.values():
            prober.stopped.set()

    def refresh_probe_targets(self) -> None:
        # Both probes go to the containers' own addresses: through the published port they would
        # queue behind docker-proxy, which under a burst of big pulls delays them past the timeout
        # and gets a busy nginx killed as "hung" (bench/).
        network = self.settings.name
        targets = {
            service: container and container.ip(network) and Target(container.id, container.ip(network), port)
            for service, port in ((SERVICE_REGISTRY, REGISTRY_PORT), (SERVICE_NGINX, NGINX_TLS_PORT))
            for container in [self.containers.get(service)]
        }
        for service, prober in self.probers.items():
            prober.target = targets[service] or None
            prober.health = self.settings.health
            prober.token = self.prepared.probe_token

    def check_ready(self) -> None:
        if not all(s.state is State.RUNNING for s in self.services.values()):
            return
        nginx = self.containers[SERVICE_NGINX]
        result = probes.probe_through_proxy(
            nginx.ip(self.settings.name), NGINX_STATUS_PORT, self.settings.health.timeout
        )
        if result.ok:
            self.ready_pending = False
            log.info("registry serving through the proxy", listen=str(self.settings.listen))
            self.notifier.ready(self.status_line())
            self.publish_status()

    def reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading configuration", config=str(self.config_path))
        try:
            new = reload_settings(self.config_path, self.settings)
            prepared = stack.prepare_files(new)
        except UserError as exc:
            log.error("config reload failed, keeping the running configuration", error=str(exc))
            self.notifier.ready(self.status_line())
            return
        old = self.settings
        self.settings = new
        for state in self.services.values():
            state.reconfigure(new.respawn, new.health)
        self.ready_pending = True
        try:
            self.converge(prepared)  # a Docker error here is retried by the loop's resync
        finally:
            self.notifier.ready(self.status_line())
        self.schedule_renewal()
        log.info(
            "configuration reloaded",
            config=str(self.config_path),
            changed=",".join(
                sorted(
                    k
                    for k in ("proxy", "registry", "auth", "tls", "respawn", "health", "docker")
                    if getattr(old, k) != getattr(new, k)
                )
            )
            or "nothing",
        )

    def shutdown(self, force: bool = False) -> None:
        self.notifier.stopping()
        self.stop_probes()
        for state in self.services.values():
            if state.state is not State.FAILED:
                state.stopped(self.clock())
        if self.settings.stop_on_exit or force:
            for service in reversed(SERVICE_ORDER):
                container = self.containers.get(service)
                if container is not None:
                    self.engine.stop(container, timeout=10)
                    log.info("container stopped", service=service, container=container.name)
        self.publish_status()

    # --- reporting ---------------------------------------------------------------------------

    def status_line(self) -> str:
        now = self.clock()
        parts = [f"{name} {state.state.value}" for name, state in self.services.items()]
        respawns = sum(s.respawns_in_window(now) for s in self.services.values())
        return f"{', '.join(parts)}, {respawns} respawns"

    def publish_status(self) -> None:
        now, wall = self.clock(), time.time()

        def to_wall(t: float | None) -> float | None:
            return None if t is None else round(wall - (now - t), 3)

        report = {
            "pid": os.getpid(),
            "started_at": self.started_wall,
            "updated_at": wall,
            "ready": not self.ready_pending,
            "services": {
                name: {
                    "supervision": state.state.value,
                    "since": to_wall(state.since),
                    "respawns_in_window": state.respawns_in_window(now),
                    "respawns_total": state.respawns_total,
                    "last_exit_code": state.last_exit_code,
                    "last_problem": state.last_problem,
                    "last_problem_at": to_wall(state.last_problem_at),
                }
                for name, state in self.services.items()
            },
        }
        path = paths.layout(self.settings).status
        atomic_write(path, json.dumps(report, indent=1).encode(), mode=0o644)
        self.notifier.status(self.status_line())


def remove_swarm_services(client: docker.DockerClient, project: str) -> None:
    """Switching back from swarm mode: the project's services go before the containers come."""
    swarm = Swarm(client, project)
    if swarm.manager_state() == "manager" and swarm.leftovers(network_name(project)):
        removed = swarm.remove_all(network_name(project))
        log.info("swarm services removed: mode is standalone", services=",".join(removed))


def run_daemon(config_path: Path) -> int:
    settings = load_settings(config_path)
    if settings.mode == "swarm":
        from supervisor.swarm_daemon import run_swarm_daemon

        return run_swarm_daemon(config_path, settings)
    daemon = Daemon(config_path, settings)
    return daemon.run()
