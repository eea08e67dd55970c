"""Circuit breaker states, retry rules (UNAVAILABLE only, within the deadline), the in-flight
cap."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.resilience import (
    BreakerState,
    CircuitBreaker,
    InFlightLimiter,
    backoff_delay,
    call_with_retry,
)
from services.common.errors import Overloaded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name
    )


def test_breaker_opens_after_consecutive_failures_and_recovers_through_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # everyone else waits for its outcome
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_call_admitted_before_the_breaker_opened_does_not_close_it() -> None:
    # A draining instance finishes its calls while its health checks say NOT_SERVING: their
    # successes must not send it new calls until it stops.
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    assert breaker.allow()  # a call goes out
    breaker.trip()  # the health checks take the instance out
    breaker.record_success()  # the call comes back fine
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    breaker.close()  # a health check answers SERVING
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=2.0, clock=clock)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_probe_that_never_reports_expires() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    clock.now += 1.0  # the probe's caller was cancelled and never recorded anything
    assert breaker.allow()


def test_only_server_side_trouble_counts_against_an_instance() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    breaker.record(rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    breaker.record(rpc_error(grpc.StatusCode.NOT_FOUND))
    assert breaker.state is BreakerState.CLOSED
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
        fresh = CircuitBreaker(failure_threshold=1)
        fresh.record(rpc_error(code))
        assert fresh.state is BreakerState.OPEN, code


@pytest.mark.parametrize(
    "outcome",
    [
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
        rpc_error(grpc.StatusCode.CANCELLED),
        TimeoutError(),
    ],
    ids=["busy", "deadline", "cancelled", "timeout"],
)
def test_busy_answers_and_short_deadlines_never_open_a_breaker(outcome: BaseException) -> None:
    """A busy instance is alive; a call that ran out of the caller's time says nothing about it."""
    breaker = CircuitBreaker(failure_threshold=1)
    for _ in range(50):
        breaker.record(outcome)
    assert breaker.state is BreakerState.CLOSED


def test_a_neutral_outcome_frees_the_half_open_probe_without_closing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow() and not breaker.allow()
    breaker.record(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()
    breaker.record(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))  # answered: alive
    assert breaker.state is BreakerState.CLOSED


def test_backoff_is_exponential_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.05), (2, 0.1), (3, 0.2), (10, 1.0)]:
        delays = [backoff_delay(attempt, 0.05, 1.0, rng) for _ in range(200)]
        assert 0.0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


class Script:
    """A fake attempt: raises the scripted errors in turn, then returns "ok"; records the timeouts
    it was given."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.timeouts: list[float | None] = []

    async def __call__(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retries_unavailable_then_succeeds() -> None:
    call = Script(rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert await call_with_retry(call, timeout_s=5.0, attempts=3, backoff_base_s=0.001) == "ok"
    assert len(call.timeouts) == 3
    given = [t for t in call.timeouts if t is not None]
    assert len(given) == 3 and all(0 < t <= 5.0 for t in given)
    assert given == sorted(given, reverse=True)  # each attempt gets what is left


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
async def test_other_errors_are_not_retried(code: grpc.StatusCode) -> None:
    call = Script(rpc_error(code))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_with_retry(call, timeout_s=5.0, backoff_base_s=0.001)
    assert info.value.code() is code and len(call.timeouts) == 1


async def test_gives_up_after_the_attempts() -> None:
    call = Script(*(rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(5)))
    with pytest.raises(grpc.aio.AioRpcError):
        await call_with_retry(call, timeout_s=None, attempts=3, backoff_base_s=0.001)
    assert call.timeouts == [None, None, None]


async def test_never_retries_past_the_deadline() -> None:
    # Backoff of up to 10 s against a 50 ms budget: the first error is final, and quickly.
    call = Script(*(rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(5)))
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError):
        await call_with_retry(
            call, timeout_s=0.05, attempts=5, backoff_base_s=10.0, backoff_max_s=10.0
        )
    assert time.monotonic() - start < 0.05 + 0.5
    assert len(call.timeouts) <= 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_real_unavailable_from_a_dead_port_is_retried() -> None:
    """A real gRPC channel to a port nobody listens on: UNAVAILABLE each time, retried, then
    raised."""
    attempts = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_free_port()}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def attempt(timeout: float | None) -> health_pb2.HealthCheckResponse:
            nonlocal attempts
            attempts += 1
            return await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call_with_retry(attempt, timeout_s=5.0, attempts=3, backoff_base_s=0.01)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE and attempts == 3


async def test_in_flight_limiter_refuses_at_once_when_full() -> None:
    limiter = InFlightLimiter(2)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter:
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert limiter.in_flight == 2
    start = time.monotonic()
    with pytest.raises(Overloaded, match="limit of 2") as info:
        async with limiter:
            pass
    assert time.monotonic() - start < 0.1 and info.value.code.name == "RESOURCE_EXHAUSTED"
    release.set()
    await asyncio.gather(*holders)
    assert limiter.in_flight == 0
    async with limiter:  # room again
        assert limiter.in_flight == 1
