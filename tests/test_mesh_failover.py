"""Kill a real service process under load: its feature fails alone, then recovers.

Runs the mesh as separate processes (classify + hash + gateway) on free
loopback ports; a load of Analyze calls keeps going while hash is SIGKILLed
and restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.support import classify_hash_mesh, encode
from visionmesh.mesh import LocalMesh, wait_healthy
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

FEATURES = [common_pb2.FEATURE_CLASSIFY, common_pb2.FEATURE_HASH]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with classify_hash_mesh(tmp_path_factory) as running:
        yield running


async def _load(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    image: bytes,
    stop: asyncio.Event,
    log: list[tuple[float, gateway_pb2.AnalyzeResponse | BaseException]],
) -> None:
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=image),
        features=FEATURES,
        options=gateway_pb2.AnalyzeOptions(no_cache=True),
    )
    while not stop.is_set():
        # Stamped when the answer arrives (a call started before the kill may end after it).
        try:
            reply = await stub.Analyze(request, timeout=20)
        except grpc.aio.AioRpcError as exc:
            log.append((time.monotonic(), exc))
        else:
            log.append((time.monotonic(), reply))


async def test_killed_service_fails_its_feature_only_and_recovers(mesh: LocalMesh, chelsea) -> None:  # type: ignore[no-untyped-def]
    image = encode(chelsea)
    log: list[tuple[float, gateway_pb2.AnalyzeResponse | BaseException]] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        workers = [asyncio.create_task(_load(stub, image, stop, log)) for _ in range(4)]
        await asyncio.sleep(2.0)
        killed_at = time.monotonic()
        mesh.kill("hash")
        await asyncio.sleep(3.0)
        restarted_at = time.monotonic()
        proc = mesh.start_service("hash")
        assert await asyncio.to_thread(wait_healthy, proc, time.monotonic() + 60)
        # The breaker's reset timeout (5 s) bounds how long recovery may take.
        recovered_by = time.monotonic() + 15.0
        while time.monotonic() < recovered_by:
            await asyncio.sleep(0.5)
            recent = [r for t, r in log[-4:] if isinstance(r, gateway_pb2.AnalyzeResponse)]
            if recent and all(r.hash.code.bits and not r.errors for r in recent):
                break
        stop.set()
        await asyncio.gather(*workers)

    calls = [r for _, r in log]
    assert not [r for r in calls if isinstance(r, BaseException)], "no call may fail as a whole"
    before = [r for t, r in log if t < killed_at]
    during = [r for t, r in log if killed_at + 0.5 < t < restarted_at]
    after = [r for _, r in log[-4:]]
    assert before, "load must run before the kill"
    assert all(r.hash.code.bits and not r.errors for r in before), [
        list(r.errors) for r in before if r.errors
    ]
    assert during, "load must continue while hash is down"
    for r in during:
        assert r.classify.labels, "classify must keep answering while hash is down"
        assert [(e.feature, e.code) for e in r.errors] == [(common_pb2.FEATURE_HASH, "UNAVAILABLE")]
    assert all(r.hash.code.bits and not r.errors for r in after), (
        "hash must recover after the restart",
        [list(r.errors) for r in after],
    )
