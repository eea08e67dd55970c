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


def test_a_process_that_records_nothing_passes_the_callers_trace_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trace_exporter: none``: no spans are built, but the caller's W3C context goes on."""
    from opentelemetry.propagate import extract, inject

    monkeypatch.setattr(tracing, "_recording", False)
    provider = tracing._interceptor_provider()
    assert isinstance(provider, trace.NoOpTracerProvider)
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("hop", context=extract(incoming)) as span:
        assert not span.is_recording()
        outgoing: dict[str, str] = {}
        inject(outgoing)
    assert outgoing["traceparent"] == incoming["traceparent"]
    monkeypatch.setattr(tracing, "_recording", True)
    assert tracing._interceptor_provider() is tracing.provider()


def test_without_recording_calls_carry_the_context_as_metadata_not_interceptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.propagate import extract

    monkeypatch.setattr(tracing, "_recording", False)
    assert tracing.client_interceptors() == []
    assert tracing.outgoing_metadata() is None  # no caller's context: nothing to pass on
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    tracer = tracing._interceptor_provider().get_tracer("test")
    with tracer.start_as_current_span("hop", context=extract(incoming)):
        assert dict(tracing.outgoing_metadata() or ()) == incoming
    monkeypatch.setattr(tracing, "_recording", True)
    assert tracing.outgoing_metadata() is None  # the interceptors inject it
    assert tracing.client_interceptors()
