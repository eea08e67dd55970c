"""The gateway's definition, run by ``visionmesh serve gateway`` or ``python -m gateway``."""

from __future__ import annotations

import os

from gateway.config import DEFAULT_PORT, GatewayConfig
from gateway.discovery import Resolver, make_resolver
from gateway.servicer import GatewayServicer
from services.common import tracing
from services.common.runner import ServiceDefinition
from services.common.server import Registration
from visionmesh.v1 import gateway_pb2, gateway_pb2_grpc

# gRPC's default reconnect backoff grows to 120 s: a restarted instance could sit
# unused that long. Within 0.5 s of it listening the channel is connected again.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def resolver_for(config: GatewayConfig) -> Resolver:
    """The resolver the gateway's settings describe (a ``ConfigError`` when they do not)."""
    # Services accept what the gateway sends them (fanout_max_side pixels, or the
    # smaller original): their server.max_message_bytes, the same setting here.
    limit = config.server.max_message_bytes
    return make_resolver(
        config.discovery,
        addresses=config.services,
        dns_targets=config.dns_targets,
        consul_addr=config.server.consul_addr or os.environ.get("CONSUL_HTTP_ADDR", ""),
        service_names=list(config.services),
        channel_options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            *RECONNECT_OPTIONS,
        ],
        tls=config.client.tls,
        interceptors=tracing.client_interceptors() if config.server.tracing else [],
        breaker_failures=config.breaker_failures,
        breaker_reset_s=config.breaker_reset_s,
    )


# Room for the rest of a request (options, features, framing) beside its image bytes.
MESSAGE_HEADROOM_BYTES = 1024 * 1024


def message_limits(config: GatewayConfig) -> dict[str, int]:
    """Largest request message per RPC: an image plus headroom, a batch, one upload message."""
    return {
        "Analyze": config.images.max_bytes + MESSAGE_HEADROOM_BYTES,
        "AnalyzeBatch": config.max_batch_bytes,
        "AnalyzeBatchStream": config.max_batch_bytes,
        "AnalyzeVideo": config.video_max_message_bytes,
    }


def build(config: GatewayConfig) -> list[Registration]:
    # Client spans need the tracer provider before the interceptors are made.
    tracing.setup("gateway", config.server.trace_exporter, config.server.otlp)
    servicer = GatewayServicer(config, resolver_for(config))
    return [
        Registration.of(
            gateway_pb2, gateway_pb2_grpc, "GatewayService", servicer, message_limits(config)
        )
    ]


DEFINITION = ServiceDefinition("gateway", GatewayConfig, build, DEFAULT_PORT)
