"""Staying up when services are not: circuit breakers, bounded retries, an in-flight cap.

- ``CircuitBreaker`` — per service instance. After ``failure_threshold``
  consecutive failures it opens (calls are refused at once, so a dead instance
  costs callers nothing); after ``reset_timeout_s`` it lets one probe through
  (half-open); the probe's outcome closes it or opens it again.
- ``call_with_retry`` — one logical call: retried with exponential backoff and
  full jitter, but only on UNAVAILABLE (the request never reached a server
  that could act on it, so repeating it is safe) and never past the caller's
  overall timeout.
- ``InFlightLimiter`` — a hard cap on concurrent requests that fails fast with
  RESOURCE_EXHAUSTED instead of queueing: under overload a quick, explicit
  "no" lets clients back off or go elsewhere while their deadline still allows.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import grpc

from services.common.errors import Overloaded, Unavailable

T = TypeVar("T")

# Outcomes that say the server (not the request) is unwell.
BREAKER_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
# The only status worth a retry: nothing was processed, another attempt (maybe another instance) can succeed.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Unavailable):
    """Refused without trying: the circuit breaker is open."""


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after a timeout -> closed on a success."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        # Half-open admits a single probe at a time; others are refused until it
        # reports. A probe that never reports (its caller was cancelled) expires
        # after reset_timeout_s, so an instance cannot be locked out for good.
        self._probe_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def _probe_in_flight(self) -> bool:
        return (
            self._probe_started_at is not None
            and self._clock() - self._probe_started_at < self.reset_timeout_s
        )

    def available(self) -> bool:
        """Whether a call would be admitted now (no side effect)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probe_in_flight
        )

    def allow(self) -> bool:
        """Admit a call? Half-open admits one probe and refuses the rest until it reports."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_started_at = self._clock()
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_started_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            # A failed probe (or a late failure while open) re-opens for a full timeout.
            self._opened_at = self._clock()
        self._probe_started_at = None

    def record(self, exc: BaseException | None) -> None:
        """Record an attempt's outcome: only server-side trouble counts against the instance."""
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in BREAKER_FAILURES:
            self.record_failure()
        elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
            self.record_failure()
        else:
            # Success, or the caller's fault (INVALID_ARGUMENT, NOT_FOUND...): the instance is fine.
            self.record_success()

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state.value}, failures={self._failures})"


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based): U(0, min(max, base * 2^(attempt-1)))."""
    ceiling = min(max_s, base_s * (2 ** (attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRYABLE


async def call_with_retry(
    call: Callable[[float | None], Awaitable[T]],
    *,
    timeout_s: float | None,
    attempts: int = 3,
    backoff_base_s: float = 0.05,
    backoff_max_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``call(remaining_timeout)`` until it succeeds, fails for good, or time runs out.

    ``call`` makes one gRPC attempt with the timeout it is given (the time left
    of ``timeout_s``; None = no deadline). Only UNAVAILABLE is retried, at most
    ``attempts`` tries in all, and a retry is skipped when its backoff would
    end past the deadline (the last error is raised instead). Circuit breakers
    are the caller's: ``FanOut`` records each attempt on the picked instance's.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    deadline = None if timeout_s is None else clock() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        remaining = None if deadline is None else deadline - clock()
        if remaining is not None and remaining <= 0:
            raise TimeoutError("deadline passed before the call could be attempted")
        try:
            result = await call(remaining)
        except Exception as exc:
            if attempt >= attempts or not _retryable(exc):
                raise
            delay = backoff_delay(attempt, backoff_base_s, backoff_max_s)
            if deadline is not None and clock() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            continue
        return result


class InFlightLimiter:
    """``async with limiter:`` admits up to ``max_in_flight`` holders; the next one gets RESOURCE_EXHAUSTED at once."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __aenter__(self) -> InFlightLimiter:
        # Single-threaded event loop: check-and-increment cannot interleave, so no lock is needed.
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"gateway is at its limit of {self.max_in_flight} requests in flight; retry with backoff"
            )
        self.in_flight += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
