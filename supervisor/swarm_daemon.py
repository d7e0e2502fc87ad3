"""The daemon in swarm mode: converge the services, then watch them until SIGTERM/SIGINT.

Swarm restarts failed tasks itself (restart policy) and replaces unhealthy ones (health checks);
this loop keeps the services equal to the config (drift, deleted services, config reloads),
reports task changes like standalone mode reports container changes, and gives up with a non-zero
exit when a service cannot converge: an update rolled back, or tasks failing faster than
`respawn.limit` in `respawn.interval`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from supervisor import paths, probes, stack, statefiles, swarm_reconcile
from supervisor.const import (
    EXIT_OK,
    EXIT_RESPAWN_LIMIT,
    HTPASSWD_FILE,
    NGINX_CERT_FILE,
    NGINX_CONF_FILE,
    NGINX_KEY_FILE,
    SERVICE_NGINX,
    SERVICE_ORDER,
)
from supervisor.daemon import EngineBack, EngineEvent, EngineLost, EventWatcher, Signalled
from supervisor.engine import DOCKER_ERRORS, RETRIED_ERRORS, Engine, connect, describe_error, describe_failure
from supervisor.errors import UserError
from supervisor.fsutil import atomic_write
from supervisor.notify import Notifier
from supervisor.settings import Settings, reload_settings
from supervisor.swarm import Swarm, Task, replica_counts
from supervisor.swarm_specs import NginxFiles, StorageCredentials, SwarmStack, desired_swarm

log = structlog.get_logger()

RESYNC_INTERVAL = 10.0
RETRY_AFTER_ERROR = 2.0
FAILED_TASK_STATES = frozenset({"failed", "rejected", "orphaned"})
ROLLING_BACK = frozenset({"rollback_started"})
UPDATING = frozenset({"updating", "paused", "rollback_started", "rollback_paused"})
ROLLED_BACK = frozenset({"rollback_completed", "rollback_paused", "paused"})
# After the engine came back, task failures for this long are the restart's doing.
ENGINE_RESTART_GRACE = 30.0
# Fewer tasks than wanted and none starting for this long: swarm gave up (max_attempts reached).
STALLED_AFTER = 20.0


@dataclass
class ServiceReport:
    """What the daemon has seen of one service's tasks."""

    # Failure times per slot (replicated) or node (global): swarm's max_attempts is per slot too.
    failures: dict[str, deque[float]] = field(default_factory=dict)
    failures_total: int = 0
    last_problem: str = ""
    last_problem_at: float | None = None
    short_since: float | None = None  # since when fewer tasks run than wanted and none starts

    def failures_within(self, seconds: float, now: float) -> int:
        return sum(1 for times in self.failures.values() for t in times if t >= now - seconds)


def swarm_inputs(settings: Settings) -> tuple[NginxFiles, StorageCredentials]:
    """Read what the services carry: nginx's files as prepared on disk and the S3 keys."""
    nginx_dir = paths.layout(settings).nginx
    nginx = NginxFiles(
        conf=(nginx_dir / NGINX_CONF_FILE).read_bytes(),
        cert=(nginx_dir / NGINX_CERT_FILE).read_bytes(),
        key=(nginx_dir / NGINX_KEY_FILE).read_bytes(),
        htpasswd=(nginx_dir / HTPASSWD_FILE).read_bytes(),
    )
    storage = settings.registry.storage
    keys = []
    for key, path in (
        ("access_key_file", storage.access_key_file),
        ("secret_key_file", storage.secret_key_file),
    ):
        if not path:
            continue
        try:
            keys.append(Path(path).read_text().strip())
        except OSError as exc:
            raise UserError(f"registry.storage.{key}: cannot read {path}: {exc.strerror}") from None
        if not keys[-1]:
            raise UserError(f"registry.storage.{key}: {path} is empty")
    return nginx, StorageCredentials(*keys)


class SwarmDaemon:
    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.notifier = Notifier()
        self.exit_code: int | None = None
        self.ready = False
        self.engine_up = True
        self.next_resync = 0.0
        self.next_observe = 0.0
        self.next_watchdog = 0.0
        self.last_error = ""
        self.started_wall = time.time()
        self.task_states: dict[str, str] = {}
        self.observed = False
        self.reports = {name: ServiceReport() for name in SERVICE_ORDER}
        self.sent: dict[str, str] = {}  # service -> config hash this run created or updated it with
        self.node_id = ""
        self.quiet_until = 0.0  # task failures caused by an engine restart are not counted
        self.desired = SwarmStack(settings.name, "", ())  # until the first converge
        self.probe_token = ""
        self.swarm: Swarm
        self.watcher: EventWatcher

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda s, _f: self.inbox.put(Signalled(s)))
        client = connect(self.settings.docker.host)
        self.swarm = Swarm(client, self.settings.name)
        self.swarm.require_manager()
        self.node_id = self.swarm.node_id()
        self.remove_standalone(Engine(client, self.settings.name))
        if self.settings.listen.host not in ("0.0.0.0", "::"):
            log.warning(
                "swarm publishes proxy.listen's port on every address of each node; its address is ignored",
                listen=str(self.settings.listen),
            )
        host, project = self.settings.docker.host, self.settings.name
        self.watcher = EventWatcher(lambda since: Swarm(connect(host), project).events(since), self.inbox)
        self.watcher.start()
        self.watcher.subscribed.wait(10)
        try:
            self.converge(self.settings, announce=True)
        except (*DOCKER_ERRORS, OSError) as exc:  # retried by the loop; a UserError ends the start
            self.report_error(describe_failure(exc))
        try:
            while self.exit_code is None:
                self.step()
        finally:
            self.watcher.close()
        return self.exit_code

    def remove_standalone(self, engine: Engine) -> None:
        if engine.containers():
            removed = stack.down(engine, self.settings.name)
            log.info("standalone containers removed: mode is swarm", containers=",".join(removed))

    def step(self) -> None:
        now = time.monotonic()
        waits = [self.next_resync - now, self.next_observe - now]
        if self.notifier.watchdog_interval:
            waits.append(self.next_watchdog - now)
        try:
            item: object | None = self.inbox.get(timeout=max(0.0, min(waits)))
        except queue.Empty:
            item = None
        try:
            if item is not None:
                self.handle(item)
            self.on_timers()
        except RETRIED_ERRORS as exc:
            self.report_error(describe_failure(exc))

    def report_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("action failed, will retry", error=message)
            self.last_error = message
        self.next_resync = time.monotonic() + RETRY_AFTER_ERROR

    def handle(self, item: object) -> None:
        if isinstance(item, Signalled):
            if item.signum == signal.SIGHUP:
                self.reload()
            else:
                log.info(
                    "stopping; the swarm keeps the services running", signal=signal.Signals(item.signum).name
                )
                self.notifier.stopping()
                self.exit_code = EXIT_OK
        elif isinstance(item, EngineEvent):
            if self.is_ours(item.event):
                self.next_observe = 0.0
                if item.event.get("Type") == "service":
                    self.next_resync = 0.0  # edited or removed by hand? (our own edits plan nothing)
        elif isinstance(item, EngineLost):
            if self.engine_up:
                log.error("lost the Docker engine, reconnecting", error=item.error)
            self.engine_up = False
            self.notifier.status("Docker engine unreachable, reconnecting")
        elif isinstance(item, EngineBack):
            log.info("Docker engine reachable again, reconverging")
            self.engine_up = True
            self.next_resync = 0.0
            # The restart stopped this node's tasks: swarm replaces them, they are no crash.
            self.quiet_until = time.monotonic() + ENGINE_RESTART_GRACE

    def is_ours(self, event: dict[str, Any]) -> bool:
        if str(event.get("Action") or "").startswith(("exec_", "health_status")):
            return False  # the health checks' own execs, every interval
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = str(attributes.get("com.docker.swarm.service.name") or attributes.get("name") or "")
        return any(name == spec.name for spec in self.desired.services)

    def on_timers(self) -> None:
        now = time.monotonic()
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + self.notifier.watchdog_interval / 2
        if not self.engine_up:
            # Nothing to do until the watcher reports the engine back.
            self.next_resync = max(self.next_resync, now + RESYNC_INTERVAL)
            self.next_observe = max(self.next_observe, now + RESYNC_INTERVAL)
            return
        if now >= self.next_resync:
            self.converge(self.settings)
        if now >= self.next_observe:
            self.observe()

    # --- converge ----------------------------------------------------------------------------

    def converge(self, settings: Settings, announce: bool = False) -> None:
        # Files are prepared on every pass (a user added since is rolled out); the advice that
        # goes with them is logged at start and reload only.
        prepared = stack.prepare_files(settings) if announce else statefiles.prepare(settings)
        nginx, credentials = swarm_inputs(settings)
        if settings.registry.storage.credentials_secret:
            self.swarm.secret_id(settings.registry.storage.credentials_secret)  # exists?
        desired = desired_swarm(settings, prepared.http_secret, nginx, credentials)
        # Adopted before acting: after a Docker failure the next pass retries these settings.
        self.settings, self.desired, self.probe_token = settings, desired, prepared.probe_token
        services = self.swarm.services()
        actions = [a for a in swarm_reconcile.plan(desired, services) if not self.held_back(a)]
        if self.exit_code is not None:
            return
        changed = swarm_reconcile.execute(self.swarm, desired, actions)
        self.sent.update({s: desired.by_service(s).config_hash for s in changed})
        self.swarm.prune_files({f.name for f in desired.files}.union(*(s.file_names for s in services)))
        if changed:
            self.ready = False
        self.last_error = ""
        self.next_resync = time.monotonic() + RESYNC_INTERVAL
        self.next_observe = 0.0

    def held_back(self, action: swarm_reconcile.Action) -> bool:
        """An update swarm is rolling back, or rolled back, is not sent again: sending the same
        spec would loop update, rollback, update. The same spec rolled back means it cannot
        converge; a different one (the config was fixed) is tried."""
        current, spec = action.service, action.spec
        if action.verb is not swarm_reconcile.Verb.UPDATE or current is None or spec is None:
            return False
        if current.update_state in ROLLING_BACK:
            return True
        if current.update_state in ROLLED_BACK and self.sent.get(spec.service) == spec.config_hash:
            last = self.reports.setdefault(spec.service, ServiceReport()).last_problem
            self.give_up(
                spec.service,
                f"update rolled back by swarm ({current.update_message or current.update_state})"
                + (f"; last task problem: {last}" if last else ""),
            )
            return True
        return False

    def reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading configuration", config=str(self.config_path))
        try:
            new = reload_settings(self.config_path, self.settings)
            self.sent.clear()  # a reload is a new attempt, also at a spec swarm rolled back before
            self.converge(new, announce=True)
        except UserError as exc:
            log.error("config reload failed, keeping the running configuration", error=str(exc))
        except DOCKER_ERRORS as exc:
            # The new settings are adopted: the next pass retries them.
            self.report_error(describe_error(exc))
        else:
            log.info("configuration reloaded", config=str(self.config_path))
        finally:
            self.notifier.ready(self.status_line())

    # --- observe -----------------------------------------------------------------------------

    def observe(self) -> None:
        self.next_observe = time.monotonic() + self.settings.health.interval
        services = {s.id: s for s in self.swarm.services()}
        tasks = self.swarm.tasks()
        nodes = self.swarm.node_names()
        for task in tasks:
            service = services.get(task.service_id)
            if service is not None:
                self.on_task(service.service, task, nodes.get(task.node_id, task.node_id[:12]))
        self.task_states = {t.id: t.state for t in tasks}
        self.observed = True  # from now on an unseen task is a new one
        counts = replica_counts(list(services.values()), tasks, nodes)
        for service in services.values():
            self.check_stalled(service, counts.get(service.service, {}))
        converged = (
            bool(self.desired.services)
            and len(counts) == len(self.desired.services)
            and all(c["running"] >= c["desired"] > 0 for c in counts.values())
        )
        if converged and not self.ready and self.serving(tasks, services):
            self.ready = True
            log.info("registry serving through the proxy", listen=str(self.settings.listen), mode="swarm")
            self.notifier.ready(self.status_line(counts))
        self.publish_status(counts)

    def serving(self, tasks: list[Task], services: dict[str, Any]) -> bool:
        """The proxy on this node answers; a manager without one (drained) takes swarm's word."""
        here = [
            t
            for t in tasks
            if t.node_id == self.node_id
            and t.state == "running"
            and getattr(services.get(t.service_id), "service", "") == SERVICE_NGINX
        ]
        if not here:
            return True
        result = probes.probe_proxy(
            "127.0.0.1", self.settings.listen.port, self.settings.health.timeout, self.probe_token
        )
        return result.ok

    def check_stalled(self, service: Any, count: dict[str, Any]) -> None:
        """Swarm stops restarting a slot after max_attempts: nothing fails any more, nothing
        starts either. Only for the replicated registry: a global service's missing task may
        just be a node that is down."""
        report = self.reports.setdefault(service.service, ServiceReport())
        short = count.get("running", 0) < count.get("desired", 0) and not count.get("starting")
        if (
            not short
            or time.monotonic() < self.quiet_until
            or (service.spec.get("Mode") or {}).get("Global") is not None
            or service.update_state in UPDATING  # ("completed" stays on the service for good)
        ):
            report.short_since = None
            return
        now = time.monotonic()
        report.short_since = report.short_since or now
        if now - report.short_since >= STALLED_AFTER + self.settings.respawn.delay:
            self.give_up(
                service.service,
                f"swarm stopped restarting its tasks: {count['running']}/{count['desired']} running",
            )

    def on_task(self, service: str, task: Task, node: str) -> None:
        before = self.task_states.get(task.id)
        if before == task.state:
            return
        if task.state == "running":
            log.info("task running", service=service, slot=task.slot, node=node, task=task.id[:12])
        elif task.state in FAILED_TASK_STATES and (before is not None or self.observed):
            reason = task.error or "failed"
            if task.exit_code is not None and f"({task.exit_code})" not in reason:
                reason += f" (exit code {task.exit_code})"
            log.warning(
                "task died", service=service, slot=task.slot, node=node, task=task.id[:12], reason=reason
            )
            self.count_failure(service, str(task.slot) if task.slot else task.node_id, reason)

    def count_failure(self, service: str, slot: str, reason: str) -> None:
        report = self.reports.setdefault(service, ServiceReport())
        now = time.monotonic()
        report.failures_total += 1
        report.last_problem, report.last_problem_at = reason, time.time()
        if now < self.quiet_until:
            return
        times = report.failures.setdefault(slot, deque())
        times.append(now)
        respawn = self.settings.respawn
        while times and times[0] < now - respawn.interval:
            times.popleft()
        if respawn.limit and respawn.interval and len(times) > respawn.limit:
            self.give_up(service, f"respawning too fast: {len(times)} failures in {respawn.interval:g}s")

    def give_up(self, service: str, problem: str) -> None:
        if self.exit_code is not None:
            return  # already stopping: one pass over the tasks can find several slots over the limit
        log.error(f"{service} cannot converge, stopped", service=service, problem=problem)
        self.reports.setdefault(service, ServiceReport()).last_problem = problem
        self.exit_code = EXIT_RESPAWN_LIMIT

    # --- reporting ---------------------------------------------------------------------------

    def status_line(self, counts: dict[str, dict[str, Any]] | None = None) -> str:
        if not counts:
            return "swarm mode"
        return ", ".join(f"{name} {c['running']}/{c['desired']}" for name, c in counts.items())

    def publish_status(self, counts: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        interval = self.settings.respawn.interval
        report = {
            "pid": os.getpid(),
            "mode": "swarm",
            "started_at": self.started_wall,
            "updated_at": time.time(),
            "ready": self.ready,
            "services": {
                name: {
                    **counts.get(name, {}),
                    "failures_in_window": r.failures_within(interval, now),
                    "failures_total": r.failures_total,
                    "last_problem": r.last_problem,
                    "last_problem_at": r.last_problem_at,
                }
                for name, r in self.reports.items()
            },
        }
        path = paths.layout(self.settings).status
        atomic_write(path, json.dumps(report, indent=1).encode(), mode=0o644)
        self.notifier.status(self.status_line(counts))


def run_swarm_daemon(config_path: Path, settings: Settings) -> int:
    return SwarmDaemon(config_path, settings).run()
