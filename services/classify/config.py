"""Settings of the classify service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import BatcherConfig, ModelConfig, ServerConfig

DEFAULT_PORT = 50051


@dataclass
class ClassifyConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    classifier: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="efficientnet_lite0", batcher=BatcherConfig(max_batch_size=32, max_queue_delay_us=2000))
    )
    # Raw ImageNet labels returned when the request does not say.
    top_k: int = 5
