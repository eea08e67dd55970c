"""Prometheus metrics shared by every server: RPCs and per-model batching."""

from __future__ import annotations

import enum

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.net import free_port

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_LATENCY = Histogram(
    "visionmesh_rpc_seconds",
    "Server-side RPC latency",
    ["service", "method"],
    buckets=_LATENCY_BUCKETS,
)
RPC_ERRORS = Counter(
    "visionmesh_rpc_errors_total",
    "RPCs that ended with a non-OK status",
    ["service", "method", "code"],
)
REJECTED_REQUESTS = Counter(
    "visionmesh_rejected_requests_total",
    "Request messages refused before a servicer saw them (oversized, malformed, "
    "option out of range)",
    ["code"],
)
RPC_IN_FLIGHT = Gauge("visionmesh_rpc_in_flight", "RPCs being served", ["service"])

QUEUE_SECONDS = Histogram(
    "visionmesh_batcher_queue_seconds",
    "Time a request waited in a model queue",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "visionmesh_batcher_compute_seconds",
    "Engine time per batch",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "visionmesh_batcher_batch_size",
    "Rows per executed batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_DEPTH = Gauge(
    "visionmesh_batcher_queue_depth", "Requests waiting in a model queue", ["model"]
)
REJECTED = Counter(
    "visionmesh_batcher_rejected_total", "Requests not computed", ["model", "reason"]
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve /metrics; port 0 picks a free one, a negative port turns it off. Returns the port."""
    if port < 0:
        return None
    if port == 0:
        port = free_port(host)
    start_http_server(port, addr=host)
    return port


def status_name(code: enum.Enum | None) -> str:
    """A status code's name (``grpc.StatusCode``); no code means the call succeeded."""
    return "OK" if code is None else code.name
