"""Settings of the OCR service (detection, direction, recognition and request limits)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.config import EngineConfig, ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("ocr").default_port

# ONNX Runtime intra-op threads per model. Left at the library default, each
# of the three sessions wants every core, and under concurrent requests they
# fight each other for them. The batchers already
# overlap detection, direction and recognition of different requests, so the
# two heavy stages get half the cores each and the tiny direction classifier
# one thread: the sum stays about the core count. ``--engine-threads N`` (or
# ``--set detector.engine.threads=N``) overrides; 0 = library default.
CORES = os.cpu_count() or 1
HEAVY_STAGE_THREADS = max(1, CORES // 2)


def _model(name: str, threads: int) -> ModelConfig:
    # Batching policies are the models' own (their repository config.yaml, services/ocr/export.py).
    return ModelConfig(name=name, engine=EngineConfig(threads=threads))


@dataclass
class DetectionConfig:
    # The detector sees the image scaled so its short side is at least
    # ``min_side`` (small text needs pixels), but never with a long side over
    # ``max_side``: that cap bounds time and memory whatever the input size.
    min_side: int = 736
    max_side: int = 2000
    # DB post-processing (PaddleOCR's defaults for PP-OCR det, as rapidocr).
    threshold: float = 0.3
    box_threshold: float = 0.5
    unclip_ratio: float = 1.6
    # Contours looked at per image; more are ignored (largest kept), which
    # bounds the time an image full of tiny boxes can take.
    max_candidates: int = 1000
    # Boxes passed on to recognition per image (highest detection score kept).
    max_boxes: int = 300
    min_box_side: int = 3


@dataclass
class RecognitionConfig:
    height: int = 48
    # Crops are resized to height 48 and right-padded to the next bucket, so
    # crops of similar width from many requests share one batch.
    width_buckets: list[int] = field(default_factory=lambda: [160, 320, 480, 640, 960, 1280])
    # Direction classifier: turn a crop 180 degrees when "180" scores above this.
    direction_threshold: float = 0.9
    use_direction: bool = True


@dataclass
class LimitsConfig:
    # Lines returned when the request says 0.
    max_lines: int = 200
    # Hard cap on what a request may ask for.
    max_lines_cap: int = 1000
    # Lines whose recognition confidence is below this are dropped (request 0 = this).
    min_confidence: float = 0.5
    # Images with a side below this are answered with no lines (nothing legible).
    min_image_side: int = 8
    # Short lines carry little evidence: round objects in ordinary photos (a
    # cat's eye, a cup from above, camera knobs) read as "0", "8", "p" or
    # "0000" at confidences up to 0.99. A line whose length is at most
    # ``short_line_weight`` (a Han character counts ``cjk_char_weight``,
    # anything else 1, spaces 0) is kept only when the recogniser is sure
    # (>= ``short_line_confidence``, or the request's bar if higher) AND the
    # detector's box looks clearly like text (mean text probability >=
    # ``short_line_box_score``). Measured in docs/ocr.md ("Photos without
    # text"). ``short_line_weight`` 0 turns the rule off.
    short_line_weight: int = 4
    cjk_char_weight: int = 2
    short_line_confidence: float = 0.9
    short_line_box_score: float = 0.75


@dataclass
class OcrConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # What one request may make this service decode (see services/common/images.py).
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    detector: ModelConfig = field(default_factory=lambda: _model("ppocr_det", HEAVY_STAGE_THREADS))
    direction: ModelConfig = field(default_factory=lambda: _model("ppocr_cls", 1))
    recognizer: ModelConfig = field(
        default_factory=lambda: _model("ppocr_rec", HEAVY_STAGE_THREADS)
    )
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
