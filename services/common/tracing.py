"""OpenTelemetry tracing: one provider per process, gRPC interceptors for both sides.

The interceptors come from ``opentelemetry-instrumentation-grpc``; they carry the
W3C trace context in gRPC metadata, so one trace spans client -> gateway -> services.
Exporters: ``console`` (stdout), ``otlp`` (OTLP/gRPC to a collector, settings in
``server.otlp``: endpoint, headers, TLS files; batched, flushed at exit) and
``memory`` (tests).
"""

from __future__ import annotations

import atexit
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.config import ConfigError, OtlpConfig
from services.common.interceptors import PerMethodInterceptor, rebuild

_provider: TracerProvider | None = None
memory_exporter: InMemorySpanExporter | None = None
# Whether any span processor records this process's spans (an exporter, or capture_spans).
_recording = False


def otlp_exporter(config: OtlpConfig) -> SpanExporter:
    """An OTLP/gRPC span exporter; TLS unless ``insecure`` (mutual when a client cert is set)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    credentials = None
    if not config.insecure:

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(config.ca_file),
            private_key=read(config.key_file),
            certificate_chain=read(config.cert_file),
        )
    return OTLPSpanExporter(
        endpoint=config.endpoint,
        insecure=config.insecure,
        credentials=credentials,
        headers=dict(config.headers) or None,
        timeout=config.timeout_s,
    )


def setup(service: str, exporter: str = "none", otlp: OtlpConfig | None = None) -> TracerProvider:
    """Install the process's tracer provider (idempotent: the first call wins)."""
    global _provider, memory_exporter, _recording
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        otlp = otlp or OtlpConfig()
        provider.add_span_processor(
            BatchSpanProcessor(
                otlp_exporter(otlp), schedule_delay_millis=otlp.flush_interval_s * 1000
            )
        )
        # Spans still queued when the process ends (SIGTERM drain included) are sent.
        atexit.register(provider.shutdown)
    elif exporter == "memory":
        memory_exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory_exporter))
    elif exporter != "none":
        raise ConfigError(f"unknown trace exporter {exporter!r} (none, console, otlp, memory)")
    _recording = exporter != "none"
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def capture_spans(service: str = "visionmesh") -> InMemorySpanExporter:
    """Keep every finished span of this process in memory too (tests, debugging)."""
    global _recording
    exporter = InMemorySpanExporter()
    setup(service).add_span_processor(SimpleSpanProcessor(exporter))
    _recording = True
    return exporter


def provider() -> TracerProvider | trace.TracerProvider:
    return _provider or trace.get_tracer_provider()


def server_interceptor() -> Any:
    """OpenTelemetry's server interceptor when spans are recorded; otherwise one that only makes
    the caller's W3C context current for the call (``outgoing_metadata`` passes it on), without
    building a span, its attributes and a proxied servicer context per call."""
    if not _recording:
        return CallerContextInterceptor()
    return aio_server_interceptor(tracer_provider=provider())


_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def _attach_caller_context(context: grpc.aio.ServicerContext) -> object | None:
    carrier = {k: v for k, v in context.invocation_metadata() or () if k in _TRACE_HEADERS}
    return otel_context.attach(propagate.extract(carrier)) if carrier else None


def _detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def _in_caller_context(
    behavior: Callable[..., Any], _request_streaming: bool
) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = _attach_caller_context(context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                _detach(token)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = _attach_caller_context(context)
        try:
            return await behavior(request, context)
        finally:
            _detach(token)

    return unary


class CallerContextInterceptor(PerMethodInterceptor):
    """The caller's trace context made current for each call, no spans (nothing records them)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return rebuild(handler, _in_caller_context)


def client_interceptors() -> list[Any]:
    """The client side's interceptors: none when nothing records spans (``outgoing_metadata``
    passes the caller's context on instead; an intercepted grpc.aio call costs an extra task
    and event-loop turns per call, for spans nobody keeps)."""
    if not _recording:
        return []
    return list(aio_client_interceptors(tracer_provider=provider()))


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current W3C trace context as call metadata, for calls made without the client
    interceptors (when nothing records spans); None when there is none to pass on or the
    interceptors do it."""
    if _recording:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items()) or None


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name, tracer_provider=provider())
