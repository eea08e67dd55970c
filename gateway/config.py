"""Settings of the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ClientConfig, ImageLimitsConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = 50050


def default_services() -> dict[str, list[str]]:
    """Every feature's service on loopback at its default port (the feature table's)."""
    return {spec.service: [f"127.0.0.1:{spec.default_port}"] for spec in features.all_features()}


@dataclass
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # Channels to the feature services (``client.tls``: CA, certificate, key).
    client: ClientConfig = field(default_factory=ClientConfig)
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
    # Health probes of every instance: an open breaker closes on the first SERVING
    # (checked every health_recovering_period_s at first, twice as long after each failed
    # check, at most every health_period_s); a closed one (checked every health_period_s)
    # is tripped at the first NOT_SERVING answer (a draining instance says so only
    # server.drain_delay_s before it refuses calls), or after health_down_after checks in a
    # row get no answer within health_timeout_s.
    health_period_s: float = 1.0
    health_recovering_period_s: float = 0.1
    health_timeout_s: float = 2.0
    health_down_after: int = 3
    # Admission: a request is taken only when every service it needs is expected
    # to finish it within this share of its feature deadline (from each service's
    # measured time per call and the calls in flight); otherwise RESOURCE_EXHAUSTED
    # at once with a retry-after-ms hint. The per-service concurrency this allows
    # is throughput x deadline, measured.
    admission_headroom: float = 0.8
    # false: a request is admitted whole or refused whole (services share a machine:
    # partial answers would spend capacity full answers need); true: each feature
    # on its own, a busy one answering RESOURCE_EXHAUSTED in its FeatureError.
    admission_partial: bool = False
    # Calls this gateway has in flight to one service instance at most (0: no limit);
    # the rest wait their turn within their deadline. Where every service shares the
    # same few cores (one machine: `visionmesh up`, the local mesh), more concurrent
    # calls than cores add contention, not throughput.
    calls_per_instance: int = 0
    # Hard ceiling on requests being analysed at once (memory protection; the
    # capacity-derived admission above normally binds far below it).
    max_in_flight: int = 256
    # Video uploads being received at once (their own budget: a slow upload holds
    # no analysis slot), the longest silence between two upload messages, and the
    # bytes of one upload kept in memory before it moves to a temporary file.
    upload_max_in_progress: int = 16
    upload_idle_timeout_s: float = 10.0
    upload_spill_bytes: int = 4 * 1024 * 1024
    upload_spill_dir: str = ""
    # Images of a batch analysed at once.
    batch_concurrency: int = 16
    max_batch_images: int = 256
    # Largest AnalyzeBatch / AnalyzeBatchStream request message.
    max_batch_bytes: int = 64 * 1024 * 1024
    # Long side of the pixels sent to services (results are rescaled back).
    fanout_max_side: int = 2048
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    # Encoded images the services can take as they came (no resize needed): "header" checks
    # limits, format and dimensions from the header and leaves the decode to the services (one
    # decode per image and service); "decode" decodes in the gateway too before forwarding.
    validation: str = "header"
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_ttl_s: float = 300.0
    video_max_bytes: int = 512 * 1024 * 1024
    video_frames: int = 3
    # A clip's sampled frames go to each service in one call where it has a batch method
    # (ClassifyBatch, RecognizeBatch); false: one call per frame. Off by default: on loopback
    # with 2 cores the three concurrent per-frame calls measured faster (docs/benchmarks.md).
    video_batch_calls: bool = False
    # Bytes of frames one batched call carries (under the services' server.max_message_bytes,
    # 16 MiB); more frames go in further calls.
    batch_call_max_bytes: int = 12 * 1024 * 1024
    video_max_frames: int = 16
    # Largest message of an AnalyzeVideo upload (the header, or one chunk; clients send 1 MiB).
    video_max_message_bytes: int = 8 * 1024 * 1024
    # Tag source -> lowest score a tag of it keeps in the merged list (unless the caller sets
    # options.all_tag_scores). classify 0.5: 15 of 20 tags right on 41 real photos, against
    # 1 of 11 in 0.2-0.5 (docs/detect.md). Sources not listed have no floor.
    tag_floors: dict[str, float] = field(default_factory=lambda: {"classify": 0.5})
