"""Upstart's `respawn limit COUNT INTERVAL`, and an optional backoff (pure; clock injected).

Upstart (init/job_process.c, job_process_catch_runaway): a respawn less than INTERVAL seconds after
the window opened increments the count, and a count above COUNT stops the job; a respawn later than
that opens a new window with the count at 1. The initial start is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RespawnLimit:
    limit: int
    interval: float
    window_start: float | None = None
    count: int = 0

    @property
    def unlimited(self) -> bool:
        return self.limit == 0 or self.interval == 0

    def allow(self, now: float) -> bool:
        """Record a respawn at monotonic time now; False means "respawning too fast, stopped"."""
        if self.window_start is not None and now - self.window_start < self.interval:
            self.count += 1
        else:
            self.window_start = now
            self.count = 1
        return self.unlimited or self.count <= self.limit

    def in_window(self, now: float) -> int:
        """Respawns counted in the window still open at now."""
        if self.window_start is None or now - self.window_start >= self.interval:
            return 0
        return self.count


@dataclass
class Backoff:
    """Delay before a respawn: delay, doubling to max_delay; back to delay after reset_after healthy."""

    delay: float
    max_delay: float
    reset_after: float
    current: float = 0.0

    def next_delay(self, healthy_since: float | None, now: float) -> float:
        if self.delay <= 0:
            return 0.0
        if self.current == 0.0 or (healthy_since is not None and now - healthy_since >= self.reset_after):
            self.current = self.delay
        else:
            self.current = min(self.current * 2, self.max_delay)
        return self.current
