"""The service runtime: graceful drain, health during drain, Prometheus metrics — on the real
classify service."""

from __future__ import annotations

import asyncio
import types
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.classify.main import DEFINITION as CLASSIFY
from services.common import config as cfgmod
from services.common.interceptors import MetricsInterceptor, RequestGuardInterceptor
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


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the /metrics endpoint serves, by (name, labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_endpoint_counts_exactly_the_calls_made(chelsea_jpeg: bytes) -> None:
    # The registry is process-wide and earlier tests already filled it: the test reads the
    # endpoint before and after its own calls and checks the differences.
    model = frozenset({("model", "efficientnet_lite0")})
    rpc = frozenset({("service", "visionmesh.v1.ClassifyService"), ("method", "Classify")})
    invalid = rpc | {("code", "INVALID_ARGUMENT")}
    watched = {
        "batches": ("visionmesh_batcher_batch_size_count", model),
        "rows": ("visionmesh_batcher_batch_size_sum", model),
        "queued": ("visionmesh_batcher_queue_seconds_count", model),
        "computed": ("visionmesh_batcher_compute_seconds_count", model),
        "rpcs": ("visionmesh_rpc_seconds_count", rpc),
        "invalid": ("visionmesh_rpc_errors_total", invalid),
    }
    async with running_service(CLASSIFY, {"server": {"metrics_port": 0}}) as server:
        assert server.metrics_port
        port = server.metrics_port
        before = await asyncio.to_thread(_scrape, port)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            good = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=chelsea_jpeg))
            await asyncio.gather(*(stub.Classify(good, timeout=30) for _ in range(4)))
            bad = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=b"junk"))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Classify(bad, timeout=30)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = await asyncio.to_thread(_scrape, port)
    delta = {k: after.get(key, 0.0) - before.get(key, 0.0) for k, key in watched.items()}
    assert delta["rows"] == 4, delta  # the four good images went through the classifier
    assert 1 <= delta["batches"] <= 4, delta
    assert delta["computed"] == delta["batches"], delta
    assert delta["queued"] == 4, delta  # one queue wait per request
    assert delta["rpcs"] == 5, delta  # the failed call is timed too
    assert delta["invalid"] == 1, delta


async def test_interceptors_wrap_a_method_once_and_keep_no_unknown_method() -> None:
    """Handlers are fixed per method: wrapped on the first call, reused after; a method with no
    handler is asked each time (so random method names cannot grow the table)."""
    asked: list[str] = []
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        asked.append(details.method)
        return handler if details.method == "/visionmesh.v1.S/Known" else None

    def details(method: str) -> grpc.HandlerCallDetails:
        return types.SimpleNamespace(method=method, invocation_metadata=())  # type: ignore[return-value]

    for interceptor in (MetricsInterceptor(), RequestGuardInterceptor({}, 1024)):
        asked.clear()
        first = await interceptor.intercept_service(continuation, details("/visionmesh.v1.S/Known"))
        again = await interceptor.intercept_service(continuation, details("/visionmesh.v1.S/Known"))
        assert first is again and first is not handler
        for _ in range(2):
            missing = await interceptor.intercept_service(continuation, details("/x.Y/Nope"))
            assert missing is None
        assert asked == ["/visionmesh.v1.S/Known", "/x.Y/Nope", "/x.Y/Nope"]
