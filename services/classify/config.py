"""Settings of the classify service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("classify").default_port


@dataclass
class TaxonomyConfig:
    # Empty = services/classify/taxonomy.yaml.
    file: str = ""
    # Taxonomy tags below this score are not returned.
    min_score: float = 0.05
    max_tags: int = 10


@dataclass
class SafetyConfig:
    """open_nsfw verdict thresholds (Yahoo's guidance: < 0.2 likely safe, > 0.8 highly probably
    NSFW)."""

    sexy_threshold: float = 0.2
    porn_threshold: float = 0.8
    # Whole-image scores in [low, high) get a second look at crops: a small
    # explicit region in a large frame dilutes the whole-image score.
    second_look: bool = True
    borderline_low: float = 0.1
    borderline_high: float = 0.8
    # Tiles per side (2 -> four quadrants) plus one centre crop of this fraction of each side.
    tiles_per_side: int = 2
    center_fraction: float = 0.6


@dataclass
class QualityConfig:
    """Thresholds measured on scikit-image photos and their degraded versions (docs/classify.md)."""

    # Long side of the working image all measures are taken at.
    working_size: int = 512
    # Mean luma (0..255).
    dark_below: float = 50.0
    overexposed_above: float = 190.0
    # Standard deviation of luma (0..255); judged only when exposure is fine.
    low_contrast_below: float = 22.0
    # Variance of the Laplacian of the contrast-normalised luma.
    blurred_below: float = 100.0


@dataclass
class ClassifyConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # What one request may make this service decode (see services/common/images.py).
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    # Batching policies are the models' own (their repository config.yaml).
    classifier: ModelConfig = field(default_factory=lambda: ModelConfig(name="efficientnet_lite0"))
    safety_model: ModelConfig = field(default_factory=lambda: ModelConfig(name="open_nsfw"))
    # Raw ImageNet labels returned when the request does not say.
    top_k: int = 5
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
