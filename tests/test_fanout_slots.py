"""Calls per service instance: the gateway keeps at most ``calls_per_instance`` in flight to each
instance; the rest wait their turn within their deadline (gateway/fanout.py, ``CallSlots``)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.fanout import CallSlots
from gateway.main import DEFINITION as GATEWAY
from services.classify.main import DEFINITION as CLASSIFY
from services.common.errors import DeadlineExceeded
from tests.support import running_service
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


async def test_no_more_calls_than_slots_run_at_once() -> None:
    slots = CallSlots(2)
    running = 0
    most = 0

    async def call() -> None:
        nonlocal running, most
        async with slots.hold("a:1", 5.0):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(call() for _ in range(8)))
    assert most == 2 and slots.peak["a:1"] == 2


def occupy(slots: CallSlots, seconds: float) -> asyncio.Task[None]:
    """A call holding the one slot of "a:1" for ``seconds``."""

    async def holder() -> None:
        async with slots.hold("a:1", 5.0):
            await asyncio.sleep(seconds)

    return asyncio.create_task(holder())


async def test_a_call_that_cannot_get_a_slot_in_time_is_a_deadline_error() -> None:
    slots = CallSlots(1)
    task = occupy(slots, 0.5)
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded, match="no free call slot on a:1"):
        async with slots.hold("a:1", 0.1):
            pass
    await task


async def test_the_time_spent_waiting_comes_off_the_call_deadline() -> None:
    slots = CallSlots(1)
    task = occupy(slots, 0.3)
    await asyncio.sleep(0.05)
    async with slots.hold("a:1", 2.0) as left:
        assert left is not None and 1.5 < left < 1.8
    await task


async def test_no_limit_means_no_waiting() -> None:
    slots = CallSlots(0)
    async with slots.hold("a:1", None) as left:
        assert left is None


async def test_gateway_with_one_call_per_instance_answers_concurrent_calls_in_full(
    chelsea_jpeg: bytes,
) -> None:
    async with running_service(CLASSIFY) as classify:
        config = {"services": {"classify": [classify.address]}, "calls_per_instance": 1}
        async with running_service(GATEWAY, config) as gateway:
            fanout = gateway.registrations[0].servicer.fanout
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                request = gateway_pb2.AnalyzeRequest(
                    image=common_pb2.Image(encoded=chelsea_jpeg),
                    features=[common_pb2.FEATURE_CLASSIFY],
                    options=gateway_pb2.AnalyzeOptions(no_cache=True),
                )
                replies = await asyncio.gather(
                    *(stub.Analyze(request, timeout=60) for _ in range(4))
                )
    assert all(r.classify.labels and not r.errors for r in replies)
    assert fanout.slots.peak == {classify.address: 1}
