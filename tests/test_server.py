"""The service runtime: graceful drain, health during drain, Prometheus metrics — on the real classify service."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.classify.main import DEFINITION as CLASSIFY
from services.common import config as cfgmod
from services.common.runner import build_server
from tests.support import running_service
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2


async def test_drain_finishes_in_flight_calls_and_reports_not_serving(chelsea_jpeg: bytes) -> None:
    # A long batching window keeps the first call queued while the drain starts.
    cfg = cfgmod.load(
        CLASSIFY.config_cls,
        environ={},
        overrides={
            "server": {"port": 0, "metrics_port": -1, "drain_delay_s": 1.0},
            "classifier": {"batcher": {"max_queue_delay_us": 1_500_000}},
        },
    )
    server = build_server(CLASSIFY, cfg)
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        in_flight = asyncio.ensure_future(
            stub.Classify(
                classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=chelsea_jpeg)),
                timeout=30,
            )
        )
        await asyncio.sleep(0.5)
        drain = asyncio.create_task(server.stop(grace=10))
        await asyncio.sleep(0.1)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await in_flight
        assert reply.labels, "a call accepted before the drain must complete"
        await drain
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        try:
            await stub.Classify(
                classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=chelsea_jpeg)),
                timeout=2,
            )
            raise AssertionError("a drained server must not accept calls")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_metrics_endpoint_reports_batching_and_rpcs(chelsea_jpeg: bytes) -> None:
    async with running_service(CLASSIFY, {"server": {"metrics_port": 0}}) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            await asyncio.gather(
                *(
                    stub.Classify(
                        classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=chelsea_jpeg)),
                        timeout=30,
                    )
                    for _ in range(4)
                )
            )
            try:
                await stub.Classify(
                    classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=b"junk")),
                    timeout=30,
                )
            except grpc.aio.AioRpcError:
                pass
        assert server.metrics_port
        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
    for needle in (
        'visionmesh_batcher_batch_size_count{model="efficientnet_lite0"}',
        'visionmesh_batcher_queue_seconds_count{model="efficientnet_lite0"}',
        'visionmesh_batcher_compute_seconds_count{model="efficientnet_lite0"}',
        'visionmesh_rpc_seconds_count{method="Classify",service="visionmesh.v1.ClassifyService"}',
        'visionmesh_rpc_errors_total{code="INVALID_ARGUMENT",method="Classify",service="visionmesh.v1.ClassifyService"}',
    ):
        assert needle in text, needle
