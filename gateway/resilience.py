"""Staying up when services are not: circuit breakers, health probes, bounded retries, an in-flight
cap.

- ``CircuitBreaker`` — per service instance. After ``failure_threshold``
  consecutive failures it opens (calls are refused at once, so a dead instance
  costs callers nothing); after ``reset_timeout_s`` it lets one probe through
  (half-open); the probe's outcome closes it or opens it again. Only real
  failures count (UNAVAILABLE, INTERNAL): a busy instance (RESOURCE_EXHAUSTED)
  is alive, and a call that ran out of the caller's deadline says nothing
  about the instance (the caller may simply have asked for too little time).
- ``HealthProber`` — asks every instance's ``grpc.health.v1`` service on a
  short period. An open breaker closes as soon as its instance answers
  SERVING (recovery within a probe period of the instance being healthy, not
  after ``reset_timeout_s``); an instance that says NOT_SERVING (draining,
  or its store failed) is tripped open at that check, and one that stops
  answering (hung, SIGSTOPped) after a few checks in a row, which the breaker's
  own counting cannot do now that deadlines do not count.
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
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter

from services.common.errors import Overloaded, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
# Alerting (monitoring/rules.yaml) fires on openings; a failed half-open probe counts again.
BREAKER_OPENED = Counter(
    "visionmesh_gateway_breaker_opened_total", "Circuit breakers opened (or re-opened)"
)

# Outcomes that say the server (not the request) is unwell.
BREAKER_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
# Outcomes that say nothing about the server: the caller's own deadline ran out,
# or the caller went away. They neither count as failures nor close a breaker.
BREAKER_NEUTRAL = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
# The only status worth a retry: nothing was processed, another attempt (maybe another instance) can
# succeed.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Unavailable):
    """Refused without trying: the circuit breaker is open."""


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after a timeout -> closed on a
    success."""

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
        """A call succeeded: the failure count starts again, and a half-open probe closes it.

        While open, a success is from a call admitted before the breaker opened (an open
        breaker admits none) and proves nothing about the instance now: a draining
        instance finishes the calls it has while its health checks say NOT_SERVING, and
        closing on those successes sent it new calls until it stopped.
        """
        if self.state is not BreakerState.OPEN:
            self.close()

    def close(self) -> None:
        """Closed now (the instance answered its health check SERVING)."""
        self._failures = 0
        self._opened_at = None
        self._probe_started_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            # A failed probe (or a late failure while open) re-opens for a full timeout.
            if self.state is not BreakerState.OPEN:
                BREAKER_OPENED.inc()
            self._opened_at = self._clock()
        self._probe_started_at = None

    def record_neutral(self) -> None:
        """An attempt that proved nothing (deadline, cancellation): only free the half-open probe
        slot."""
        self._probe_started_at = None

    def trip(self) -> None:
        """Open now (the instance failed its health checks), whatever the failure count."""
        if self.state is not BreakerState.OPEN:
            BREAKER_OPENED.inc()
        self._failures = max(self._failures, self.failure_threshold)
        self._opened_at = self._clock()
        self._probe_started_at = None

    def record(self, exc: BaseException | None) -> None:
        """Record an attempt's outcome: only server-side trouble counts against the instance."""
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in BREAKER_FAILURES:
            self.record_failure()
        elif isinstance(exc, grpc.aio.AioRpcError) and exc.code() in BREAKER_NEUTRAL:
            self.record_neutral()
        elif isinstance(exc, asyncio.TimeoutError | TimeoutError | asyncio.CancelledError):
            self.record_neutral()
        else:
            # Success, a busy answer (RESOURCE_EXHAUSTED: alive, just full) or the
            # caller's fault (INVALID_ARGUMENT, NOT_FOUND...): the instance is fine.
            self.record_success()

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state.value}, failures={self._failures})"


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based): U(0, min(max,
    base * 2^(attempt-1)))."""
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
    """``async with limiter:`` admits up to ``max_in_flight`` holders; the next one gets
    RESOURCE_EXHAUSTED at once."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __aenter__(self) -> InFlightLimiter:
        # Single-threaded event loop: check-and-increment cannot interleave, so no lock is needed.
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"gateway is at its limit of {self.max_in_flight} requests in flight; "
                "retry with backoff"
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


class ProbedEndpoint(Protocol):
    """What the prober needs of an endpoint (``gateway.discovery.Endpoint`` fits)."""

    address: str
    channel: grpc.aio.Channel
    breaker: CircuitBreaker


class Probe(enum.Enum):
    """What one health check found."""

    SERVING = "serving"
    # The instance answered that it is not serving: it is draining, starting, or failed.
    NOT_SERVING = "not_serving"
    # No answer within the timeout, or no connection.
    NO_ANSWER = "no_answer"


class HealthProber:
    """Background ``grpc.health.v1`` checks of every endpoint ``endpoints()`` returns.

    An endpoint whose breaker is not closed is asked every ``recovering_period_s``
    at first, the period doubling with each failed check up to ``period_s``
    (an instance that stays down is not asked ten times a second forever: with
    four absent services that was 2 % of a core in an idle gateway, on the event
    loop every call needs), and closed on the first SERVING; a closed one is asked
    every ``period_s``. A closed breaker is tripped open at the first NOT_SERVING
    answer: a draining instance says so only ``drain_delay_s`` (3 s in the
    manifests) before it refuses calls (docs/reliability.md, "Recovery"). No
    answer (``timeout_s`` passed, or no connection) trips it only after
    ``down_after`` in a row: the default ``timeout_s`` is generous on purpose,
    since a busy instance answers its health checks late, and tripping it would
    turn "busy" into "unavailable".
    """

    def __init__(
        self,
        endpoints: Callable[[], Iterable[ProbedEndpoint]],
        *,
        period_s: float = 1.0,
        recovering_period_s: float = 0.1,
        timeout_s: float = 2.0,
        down_after: int = 3,
    ) -> None:
        self._endpoints = endpoints
        self.period_s = period_s
        self.recovering_period_s = recovering_period_s
        self.timeout_s = timeout_s
        self.down_after = down_after
        self._failed_checks: dict[str, int] = {}
        self._last_check: dict[str, float] = {}
        self._checking: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="health-prober")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._inflight.clear()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for endpoint in list(self._endpoints()):
                recovering = endpoint.breaker.state is not BreakerState.CLOSED
                period = self._recovering_period(endpoint) if recovering else self.period_s
                if endpoint.address in self._checking:
                    continue
                if now - self._last_check.get(endpoint.address, -math.inf) < period:
                    continue
                self._last_check[endpoint.address] = now
                self._checking.add(endpoint.address)
                task = asyncio.create_task(self._check(endpoint))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            await asyncio.sleep(self.recovering_period_s / 2)

    def _recovering_period(self, endpoint: ProbedEndpoint) -> float:
        failed = self._failed_checks.get(endpoint.address, 0)
        backoff = self.recovering_period_s * 2 ** min(failed, 16)
        return max(self.recovering_period_s, min(self.period_s, backoff))

    async def _check(self, endpoint: ProbedEndpoint) -> None:
        try:
            probe = await self.check(endpoint.channel, self.timeout_s)
        finally:
            self._checking.discard(endpoint.address)
        breaker = endpoint.breaker
        if probe is Probe.SERVING:
            self._failed_checks[endpoint.address] = 0
            if breaker.state is not BreakerState.CLOSED:
                log.info(
                    "instance healthy again: breaker closed",
                    extra={"fields": {"address": endpoint.address}},
                )
                breaker.close()
            return
        failed = self._failed_checks.get(endpoint.address, 0) + 1
        self._failed_checks[endpoint.address] = failed
        tripped = probe is Probe.NOT_SERVING or failed >= self.down_after
        if tripped and breaker.state is BreakerState.CLOSED:
            log.warning(
                "instance failed its health checks: breaker opened",
                extra={
                    "fields": {
                        "address": endpoint.address,
                        "failed_checks": failed,
                        "last_check": probe.value,
                    }
                },
            )
            breaker.trip()

    @staticmethod
    async def check(channel: grpc.aio.Channel, timeout_s: float) -> Probe:
        """One ``Health.Check`` of the whole server within ``timeout_s``."""
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return Probe.NO_ANSWER
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return Probe.SERVING
        return Probe.NOT_SERVING
