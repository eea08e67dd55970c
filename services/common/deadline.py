"""When a request must be answered, and whether its caller is still waiting.

The servicer turns the gRPC context into a ``Deadline`` once
(``services.common.rpc.request_deadline``); pipelines, ``ServedModel`` and the
batcher take this small object and never see a transport object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Deadline:
    # Absolute time on ``time.monotonic``'s clock; None = no deadline.
    at: float | None = None
    # True once the caller has gone (cancelled the call): queued work for it is dropped.
    cancelled: Callable[[], bool] = _never

    @classmethod
    def after(cls, seconds: float | None, cancelled: Callable[[], bool] = _never) -> Deadline:
        """A deadline ``seconds`` from now (``None`` = none)."""
        return cls(None if seconds is None else time.monotonic() + seconds, cancelled)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left (never negative), or ``None`` without a deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - (time.monotonic() if now is None else now))

    def passed(self, now: float) -> bool:
        return self.at is not None and self.at <= now


NO_DEADLINE = Deadline()
