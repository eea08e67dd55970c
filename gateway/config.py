"""Settings of the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ImageLimitsConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = 50050


def default_services() -> dict[str, list[str]]:
    """Every feature's service on loopback at its default port (the feature table's)."""
    return {spec.service: [f"127.0.0.1:{spec.default_port}"] for spec in features.all_features()}


@dataclass
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # "static" (addresses below), "consul" (server.consul_addr / CONSUL_HTTP_ADDR) or "dns".
    discovery: str = "static"
    # Static discovery: service -> instance addresses.
    services: dict[str, list[str]] = field(default_factory=default_services)
    # DNS discovery (Kubernetes headless services): service -> "host:port".
    dns_targets: dict[str, str] = field(default_factory=dict)
    # Deadline when the caller sets none, and the share of the caller's remaining
    # time each feature call gets (the rest is left for merging and the reply).
    default_deadline_s: float = 10.0
    feature_deadline_fraction: float = 0.9
    retry_attempts: int = 3
    breaker_failures: int = 5
    breaker_reset_s: float = 5.0
    # Requests (Analyze, AnalyzeBatch, AnalyzeVideo calls) served at once; past it RESOURCE_EXHAUSTED.
    max_in_flight: int = 256
    # Images of a batch analysed at once.
    batch_concurrency: int = 16
    max_batch_images: int = 256
    # Long side of the pixels sent to services (results are rescaled back).
    fanout_max_side: int = 2048
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_ttl_s: float = 300.0
    video_max_bytes: int = 512 * 1024 * 1024
    video_frames: int = 3
    video_max_frames: int = 16
    # Tag source -> lowest score a tag of it keeps in the merged list (unless the caller sets
    # options.all_tag_scores). classify 0.5: 15 of 20 tags right on 41 real photos, against
    # 1 of 11 in 0.2-0.5 (docs/detect.md). Sources not listed have no floor.
    tag_floors: dict[str, float] = field(default_factory=lambda: {"classify": 0.5})
