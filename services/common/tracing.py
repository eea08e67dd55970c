"""OpenTelemetry tracing: one provider per process, gRPC interceptors for both sides.

The interceptors come from ``opentelemetry-instrumentation-grpc``; they carry the
W3C trace context in gRPC metadata, so one trace spans client -> gateway -> services.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.config import ConfigError

_provider: TracerProvider | None = None
memory_exporter: InMemorySpanExporter | None = None


def setup(service: str, exporter: str = "none") -> TracerProvider:
    """Install the process's tracer provider (idempotent: the first call wins)."""
    global _provider, memory_exporter
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "memory":
        memory_exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory_exporter))
    elif exporter != "none":
        raise ConfigError(f"unknown trace exporter {exporter!r} (none, console, memory)")
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def capture_spans(service: str = "visionmesh") -> InMemorySpanExporter:
    """Keep every finished span of this process in memory too (tests, debugging)."""
    exporter = InMemorySpanExporter()
    setup(service).add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def provider() -> TracerProvider | trace.TracerProvider:
    return _provider or trace.get_tracer_provider()


def server_interceptor() -> Any:
    return aio_server_interceptor(tracer_provider=provider())


def client_interceptors() -> list[Any]:
    return list(aio_client_interceptors(tracer_provider=provider()))


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name, tracer_provider=provider())
