"""A global time budget: every phase asks how long it may run, so the kit always finishes."""

from __future__ import annotations

import time


class Budget:
    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return max(0.0, self.total_s - self.elapsed())

    def share(self, fraction: float, reserve_s: float = 0.0) -> float:
        """Seconds a phase may use: ``fraction`` of what is left after ``reserve_s`` (kept for
        later phases)."""
        return max(0.0, (self.left() - reserve_s) * fraction)


class Deadline:
    """A phase's own end time, never past the global budget."""

    def __init__(self, budget: Budget, seconds: float) -> None:
        self.end = time.monotonic() + min(seconds, budget.left())

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.end
