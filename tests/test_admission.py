"""Admission from measured capacity (gateway and batcher) and breakers closed by health probes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.admission import Admission
from gateway.resilience import BreakerState, CircuitBreaker, HealthProber, Probe
from services.common.deadline import Deadline
from services.common.errors import DeadlineExceeded, Overloaded, Status, retry_after_metadata
from tests.test_batcher import RecordingEngine, make, rows


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_service_always_admits_even_with_a_pessimistic_estimate() -> None:
    admission = Admission(["ocr"], initial_item_s=100.0)
    with admission.admit({"ocr": 1}, budget_s=0.5):
        assert admission.loads["ocr"].in_flight == 1
    assert admission.loads["ocr"].in_flight == 0


def test_refuses_what_cannot_finish_before_the_deadline_with_a_retry_hint() -> None:
    clock = FakeClock()
    admission = Admission(["classify"], headroom=1.0, initial_item_s=0.5, clock=clock)
    held = [admission.admit({"classify": 1}, budget_s=2.0) for _ in range(4)]  # 4 x 0.5 s = 2 s
    with pytest.raises(Overloaded) as info:
        admission.admit({"classify": 1}, budget_s=2.0)
    assert info.value.code is Status.RESOURCE_EXHAUSTED
    assert "classify" in info.value.message and info.value.retry_after_s == pytest.approx(2.0)
    assert retry_after_metadata(info.value) == (("retry-after-ms", "2000"),)
    # A caller with a longer deadline still fits; one without a deadline always does.
    admission.admit({"classify": 1}, budget_s=10.0).close()
    admission.admit({"classify": 1}, budget_s=None).close()
    held[0].close()
    admission.admit({"classify": 1}, budget_s=2.0).close()  # room again
    for ticket in held[1:]:
        ticket.close()
    assert admission.loads["classify"].in_flight == 0


def test_the_retry_hint_stretches_when_many_callers_are_waiting() -> None:
    """Many refusals per freed slot: callers are asked to come back later, so refusing stays
    cheap."""
    clock = FakeClock()
    admission = Admission(["ocr"], headroom=1.0, initial_item_s=0.5, clock=clock)
    held = [admission.admit({"ocr": 1}, budget_s=None) for _ in range(4)]  # drains in 2 s
    hints = []
    for _ in range(200):  # 200 refusals within a second: ~400 waiting per 2 s drain, 4 slots
        clock.now += 0.005
        with pytest.raises(Overloaded) as info:
            admission.admit({"ocr": 1}, budget_s=1.0)
        hints.append(info.value.retry_after_s)
    assert hints[0] == pytest.approx(2.0)
    assert hints[-1] is not None and hints[-1] > 10 * hints[0] / 2
    assert max(h for h in hints if h is not None) <= 30.0
    clock.now += 5.0  # the crowd is gone: back to the drain time
    with pytest.raises(Overloaded) as info:
        admission.admit({"ocr": 1}, budget_s=1.0)
    assert info.value.retry_after_s == pytest.approx(2.0)
    for ticket in held:
        ticket.close()


def test_a_request_is_admitted_whole_or_not_at_all_by_default() -> None:
    admission = Admission(["classify", "ocr"], headroom=1.0, initial_item_s=1.0)
    busy = admission.admit({"ocr": 1}, budget_s=None)
    with pytest.raises(Overloaded, match="ocr"):
        admission.admit({"classify": 1, "ocr": 1}, budget_s=1.5)
    assert admission.loads["classify"].in_flight == 0  # nothing held for the refused request
    busy.close()


def test_partial_admission_refuses_only_the_busy_feature() -> None:
    admission = Admission(["classify", "ocr"], headroom=1.0, partial=True, initial_item_s=1.0)
    busy = admission.admit({"ocr": 1}, budget_s=None)
    ticket = admission.admit({"classify": 1, "ocr": 1}, budget_s=1.5)
    assert set(ticket.slots) == {"classify"} and set(ticket.refused) == {"ocr"}
    assert ticket.refused["ocr"].code is Status.RESOURCE_EXHAUSTED
    assert ticket.retry_after_s == pytest.approx(1.0)
    assert admission.loads["ocr"].in_flight == 1  # nothing held for the refused feature
    with pytest.raises(Overloaded, match="ocr"):
        admission.admit({"ocr": 1}, budget_s=1.5)
    ticket.close()
    busy.close()
    assert admission.loads["classify"].in_flight == admission.loads["ocr"].in_flight == 0


def test_the_limit_follows_measured_throughput() -> None:
    """Latency / calls found in flight: batching (many calls, little more time) raises the limit."""
    clock = FakeClock()
    admission = Admission(["face"], headroom=1.0, initial_item_s=0.5, clock=clock, alpha=0.5)
    assert admission.limit("face", 5.0) == 10
    for _ in range(10):
        tickets = [admission.admit({"face": 1}, budget_s=None) for _ in range(20)]
        clock.now += 1.0  # 20 calls served in one second: 0.05 s each
        for ticket in tickets:
            ticket.finish("face")
    assert admission.loads["face"].item_s < 0.1
    assert admission.limit("face", 5.0) > 50
    # Slower again (the machine got busy): the limit comes down.
    for _ in range(10):
        ticket = admission.admit({"face": 1}, budget_s=None)
        clock.now += 1.0
        ticket.finish("face")
    assert admission.limit("face", 5.0) < 8


def test_fast_failures_do_not_read_as_speed() -> None:
    clock = FakeClock()
    admission = Admission(["hash"], initial_item_s=0.5, clock=clock)
    ticket = admission.admit({"hash": 1}, budget_s=None)
    ticket.finish("hash", measured=False)
    assert admission.loads["hash"].item_s == 0.5 and admission.loads["hash"].in_flight == 0


async def test_batcher_refuses_at_admission_instead_of_missing_deadlines() -> None:
    engine = RecordingEngine(delay_s=0.1)
    batcher = await make([engine], max_batch_size=1, max_queue_delay_us=0)
    try:
        for _ in range(4):  # the first batch is not measured; then ~0.1 s per row
            await batcher.infer(rows(1, 1.0))
        assert batcher.row_s == pytest.approx(0.1, rel=0.5)
        start = time.monotonic()
        deadline = Deadline(start + 0.45)
        results = await asyncio.gather(
            *(batcher.infer(rows(1, 1.0), deadline) for _ in range(20)), return_exceptions=True
        )
        took = time.monotonic() - start
    finally:
        await batcher.close()
    served = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    late = [r for r in results if isinstance(r, DeadlineExceeded)]
    assert 2 <= len(served) <= 5 and len(refused) == 20 - len(served) - len(late)
    assert len(late) <= 1  # the estimate may be off by one batch, not by the queue
    assert all(r.retry_after_s is not None and r.retry_after_s > 0 for r in refused)
    assert took < 0.45 + 0.2


@dataclass
class _Endpoint:
    address: str
    channel: grpc.aio.Channel
    breaker: CircuitBreaker


@contextlib.asynccontextmanager
async def _health_server(
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
) -> AsyncIterator[tuple[health.aio.HealthServicer, grpc.aio.Channel]]:
    """A real gRPC health service answering ``status`` for the whole server, and a channel to it."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", status)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield servicer, channel
    finally:
        await server.stop(None)


async def test_prober_closes_an_open_breaker_as_soon_as_the_instance_serves() -> None:
    async with _health_server(health_pb2.HealthCheckResponse.NOT_SERVING) as (servicer, channel):
        endpoint = _Endpoint("a", channel, CircuitBreaker(failure_threshold=1, reset_timeout_s=60))
        prober = HealthProber(
            lambda: [endpoint], period_s=0.1, recovering_period_s=0.05, down_after=2
        )
        prober.start()
        try:
            # NOT_SERVING checks trip a closed breaker.
            for _ in range(40):
                await asyncio.sleep(0.05)
                if endpoint.breaker.state is BreakerState.OPEN:
                    break
            assert endpoint.breaker.state is BreakerState.OPEN
            await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            serving_at = time.monotonic()
            while endpoint.breaker.state is not BreakerState.CLOSED:
                assert time.monotonic() - serving_at < 1.0, "breaker must close within 1 s"
                await asyncio.sleep(0.01)
        finally:
            await prober.close()


async def test_prober_backs_off_from_an_instance_that_stays_down() -> None:
    checks: list[float] = []

    class CountingProber(HealthProber):
        @staticmethod
        async def check(channel: grpc.aio.Channel, timeout_s: float) -> Probe:
            checks.append(time.monotonic())
            return Probe.NO_ANSWER  # the instance never comes back

    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=60)
    breaker.trip()
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        prober = CountingProber(
            lambda: [_Endpoint("a", channel, breaker)], period_s=0.4, recovering_period_s=0.05
        )
        prober.start()
        try:
            await asyncio.sleep(2.0)
        finally:
            await prober.close()
    # Every 0.05 s without back-off: 40 checks. With it: 0.05, 0.1, 0.2, then every 0.4 s.
    assert 4 <= len(checks) <= 10, len(checks)
    gaps = [b - a for a, b in zip(checks, checks[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.4, abs=0.1)


async def test_prober_trips_at_the_first_not_serving_answer() -> None:
    # A draining instance says NOT_SERVING only drain_delay_s (3 s) before it refuses calls:
    # taking it out of rotation must not wait for down_after more checks, a period apart.
    async with _health_server(health_pb2.HealthCheckResponse.NOT_SERVING) as (_, channel):
        endpoint = _Endpoint("a", channel, CircuitBreaker(failure_threshold=1, reset_timeout_s=60))
        # One check of the closed breaker in this test's time: the first.
        prober = HealthProber(lambda: [endpoint], period_s=30, down_after=3)
        prober.start()
        try:
            started = time.monotonic()
            while endpoint.breaker.state is BreakerState.CLOSED:
                assert time.monotonic() - started < 2.0, "one NOT_SERVING must trip the breaker"
                await asyncio.sleep(0.01)
        finally:
            await prober.close()


async def test_prober_trips_a_silent_instance_after_down_after_checks() -> None:
    # No answer may only mean busy: it takes down_after checks in a row.
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=60)
    states: list[BreakerState] = []

    class SilentProber(HealthProber):
        @staticmethod
        async def check(channel: grpc.aio.Channel, timeout_s: float) -> Probe:
            states.append(breaker.state)
            return Probe.NO_ANSWER

    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        prober = SilentProber(
            lambda: [_Endpoint("a", channel, breaker)],
            period_s=0.05,
            recovering_period_s=0.05,
            down_after=3,
        )
        prober.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if len(states) >= 4:
                    break
        finally:
            await prober.close()
    assert states[:4] == [BreakerState.CLOSED] * 3 + [BreakerState.OPEN], states
