"""One trace from the client through the gateway to the service (OpenTelemetry, real servers)."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import trace

from gateway.main import DEFINITION as GATEWAY
from services.classify.main import DEFINITION as CLASSIFY
from services.common import tracing
from tests.support import running_service
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331


async def test_one_trace_spans_client_gateway_and_service(chelsea_jpeg: bytes) -> None:
    spans = tracing.capture_spans()
    async with running_service(CLASSIFY) as classify:
        services = {"classify": [classify.address]}
        async with running_service(GATEWAY, {"services": services}) as gateway:
            async with grpc.aio.insecure_channel(
                gateway.address, interceptors=tracing.client_interceptors()
            ) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                with tracing.tracer("test").start_as_current_span("client-request") as root:
                    reply = await stub.Analyze(
                        gateway_pb2.AnalyzeRequest(
                            image=common_pb2.Image(encoded=chelsea_jpeg),
                            features=[common_pb2.FEATURE_CLASSIFY],
                            options=gateway_pb2.AnalyzeOptions(no_cache=True),
                        ),
                        timeout=30,
                    )
                    trace_id = root.get_span_context().trace_id
    assert reply.classify.labels
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    names = {(s.name, s.kind) for s in mine}
    assert ("/visionmesh.v1.GatewayService/Analyze", trace.SpanKind.SERVER) in names, names
    assert ("/visionmesh.v1.ClassifyService/Classify", trace.SpanKind.CLIENT) in names, names
    assert ("/visionmesh.v1.ClassifyService/Classify", trace.SpanKind.SERVER) in names, names


async def test_a_gateway_that_records_nothing_passes_the_callers_trace_on(
    chelsea_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trace_exporter: none`` in the gateway: it builds no spans, yet the caller's W3C context
    reaches the (recording) service behind it, whose span is the caller's child."""
    spans = tracing.capture_spans()
    async with running_service(CLASSIFY) as classify:  # recording: OpenTelemetry's interceptor
        monkeypatch.setattr(tracing, "_recording", False)
        assert isinstance(tracing.server_interceptor(), tracing.CallerContextInterceptor)
        services = {"classify": [classify.address]}
        async with running_service(GATEWAY, {"services": services}) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                reply = await gateway_pb2_grpc.GatewayServiceStub(channel).Analyze(
                    gateway_pb2.AnalyzeRequest(
                        image=common_pb2.Image(encoded=chelsea_jpeg),
                        features=[common_pb2.FEATURE_CLASSIFY],
                        options=gateway_pb2.AnalyzeOptions(no_cache=True),
                    ),
                    metadata=(("traceparent", f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"),),
                    timeout=30,
                )
    assert reply.classify.labels
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == TRACE_ID]
    assert [(s.name, s.kind) for s in mine] == [
        ("/visionmesh.v1.ClassifyService/Classify", trace.SpanKind.SERVER)
    ]
    assert mine[0].parent is not None and mine[0].parent.span_id == CALLER_SPAN


def test_without_recording_calls_carry_the_context_as_metadata_not_interceptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import context
    from opentelemetry.propagate import extract

    monkeypatch.setattr(tracing, "_recording", False)
    assert tracing.client_interceptors() == []
    assert tracing.outgoing_metadata() is None  # no caller's context: nothing to pass on
    incoming = {"traceparent": f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"}
    token = context.attach(extract(incoming))
    try:
        assert dict(tracing.outgoing_metadata() or ()) == incoming
    finally:
        context.detach(token)
    monkeypatch.setattr(tracing, "_recording", True)
    assert tracing.outgoing_metadata() is None  # the interceptors inject it
    assert tracing.client_interceptors()
