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


def resolver_for(config: GatewayConfig) -> Resolver:
    """The resolver the gateway's settings describe (a ``ConfigError`` when they do not)."""
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
        ],
        interceptors=tracing.client_interceptors() if config.server.tracing else [],
        breaker_failures=config.breaker_failures,
        breaker_reset_s=config.breaker_reset_s,
    )


def build(config: GatewayConfig) -> list[Registration]:
    # Client spans need the tracer provider before the interceptors are made.
    tracing.setup("gateway", config.server.trace_exporter)
    servicer = GatewayServicer(config, resolver_for(config))
    return [Registration.of(gateway_pb2, gateway_pb2_grpc, "GatewayService", servicer)]


DEFINITION = ServiceDefinition("gateway", GatewayConfig, build, DEFAULT_PORT)
