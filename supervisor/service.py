"""One supervised service's state machine (pure; clock passed in), after supervisord's states.

STOPPED --start--> STARTING --probe ok--> RUNNING
STARTING/RUNNING --exit or N failed probes--> respawn (STARTING), BACKOFF (delay), or FAILED
BACKOFF --delay over--> STARTING
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from supervisor.respawn import Backoff, RespawnLimit
from supervisor.settings import HealthSettings, RespawnSettings


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"


class Decision(enum.Enum):
    NOTHING = "nothing"
    RESPAWN = "respawn"  # restart the container now
    WAIT = "wait"  # restart after the backoff delay
    GIVE_UP = "give_up"  # respawning too fast: stop everything


@dataclass
class ServiceState:
    name: str
    respawn: RespawnSettings
    health: HealthSettings
    state: State = State.STOPPED
    since: float = 0.0
    failed_probes: int = 0
    respawns_total: int = 0
    last_exit_code: int | None = None
    last_problem: str = ""
    last_problem_at: float | None = None
    backoff_until: float | None = None
    limit: RespawnLimit = field(init=False)
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.limit = RespawnLimit(self.respawn.limit, self.respawn.interval)
        self.backoff = Backoff(self.respawn.delay, self.respawn.max_delay, self.respawn.reset_after)

    def reconfigure(self, respawn: RespawnSettings, health: HealthSettings) -> None:
        self.respawn, self.health = respawn, health
        self.limit.limit, self.limit.interval = respawn.limit, respawn.interval
        self.backoff = Backoff(respawn.delay, respawn.max_delay, respawn.reset_after)

    def _enter(self, state: State, now: float) -> None:
        self.state, self.since = state, now

    def started(self, now: float) -> None:
        self.failed_probes = 0
        self.backoff_until = None
        self._enter(State.STARTING, now)

    def stopped(self, now: float) -> None:
        self._enter(State.STOPPED, now)

    def exited(self, now: float, exit_code: int, reason: str) -> Decision:
        self.last_exit_code = exit_code
        return self._trouble(now, reason)

    def probed(self, now: float, ok: bool, detail: str) -> Decision:
        if self.state not in (State.STARTING, State.RUNNING):
            return Decision.NOTHING
        if ok:
            self.failed_probes = 0
            if self.state is State.STARTING:
                self._enter(State.RUNNING, now)
            return Decision.NOTHING
        if self.state is State.STARTING and now - self.since < self.health.start_period:
            return Decision.NOTHING
        self.failed_probes += 1
        if self.failed_probes < self.health.failures:
            return Decision.NOTHING
        return self._trouble(now, f"{self.failed_probes} probes failed in a row: {detail}")

    def _trouble(self, now: float, reason: str) -> Decision:
        self.last_problem, self.last_problem_at = reason, now
        if self.state in (State.FAILED, State.STOPPED, State.BACKOFF):
            return Decision.NOTHING
        healthy_since = self.since if self.state is State.RUNNING else None
        if not self.limit.allow(now):
            self._enter(State.FAILED, now)
            return Decision.GIVE_UP
        self.respawns_total += 1
        delay = self.backoff.next_delay(healthy_since, now)
        if delay > 0:
            self.backoff_until = now + delay
            self._enter(State.BACKOFF, now)
            return Decision.WAIT
        return Decision.RESPAWN

    def backoff_over(self, now: float) -> bool:
        return self.state is State.BACKOFF and self.backoff_until is not None and now >= self.backoff_until

    def respawns_in_window(self, now: float) -> int:
        return self.limit.in_window(now)
