"""Settings of the face service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import BatcherConfig, ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("face").default_port


def _model(name: str, max_batch_size: int | None = None) -> ModelConfig:
    # Batching policies are the models' own (their repository config.yaml, services/face/export.py)
    # but for the queue delay: this service sends a request to an idle engine at once, and the
    # requests that arrive while it computes form the next batch. Waiting for company buys
    # nothing on CPU and adds a delay to each of a call's sequential model steps (detector, then
    # heads; MTCNN's stages).
    batcher = BatcherConfig(max_queue_delay_us=0, max_batch_size=max_batch_size)
    return ModelConfig(name=name, batcher=batcher)


# RetinaFace costs more per image in larger batches on CPU (1 ONNX Runtime thread, CPU ms per
# image at batch 1 / 2 / 8: 15.2 / 15.4 / 17.6 at 512 x 512, 16.6 / 16.9 / 18.4 at 640 x 448),
# so the service runs it in pairs at most; GPU deployments set
# ``retinaface.batcher.max_batch_size: 16`` (docs/gpu.md). The heads cost the same per face in
# any batch and keep their own policy.
CPU_DETECTOR_BATCH = 2


@dataclass
class RetinaFaceConfig:
    # Square input sides: each image is letterboxed into the smallest one that holds its long
    # side (else the largest), so concurrent calls share an input shape and batch together.
    buckets: list[int] = field(default_factory=lambda: [320, 640])
    # Pad every image to its bucket's square (one input shape per bucket: calls with images of
    # any size share a batch; what fixed-shape GPU engines want), or, false, only to a multiple
    # of 32: a 3:2 photo is then two thirds of the square's work. On CPU a batch costs the
    # same per image as single runs, so merging shapes saves nothing there.
    pad_to_square: bool = False
    # Face probability floor: 0.8 keeps all six faces of the group photo at 320 px (lowest 0.89)
    # and drops the cat's head in chelsea (0.66 at 640 px).
    score_threshold: float = 0.8
    nms_iou: float = 0.4


@dataclass
class DetectorConfig:
    # "retinaface" (one pass per image, batched across calls) or "mtcnn" (P/R/O-Net cascade).
    kind: str = "retinaface"
    # Smallest face side (pixels) returned; for MTCNN also where its pyramid starts.
    min_face_size: float = 10.0
    max_faces: int = 50
    retinaface: RetinaFaceConfig = field(default_factory=RetinaFaceConfig)
    # Per-stage score thresholds (P-Net, R-Net, O-Net) and pyramid step. facenet-pytorch uses
    # 0.7 for O-Net; 0.9 drops hands and other face-like clutter (0.76 on the group photo).
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.9])
    scale_factor: float = 0.709


@dataclass
class QualityConfig:
    # Variance of the Laplacian of the 64 px aligned grey face below which it is "blurred".
    blur_threshold: float = 100.0
    # Mean luma (0..255) of the face below / above which it is under / over exposed.
    under_exposed_below: float = 60.0
    over_exposed_above: float = 200.0


@dataclass
class TagConfig:
    # A "face/smiling" tag needs this "happy" probability on some face.
    smiling_min: float = 0.5
    # A "face/female" / "face/male" tag needs this gender confidence.
    gender_min: float = 0.6


@dataclass
class MtcnnModels:
    # Loaded only with detector.kind "mtcnn". P-Net batches only same-size pyramid levels.
    pnet: ModelConfig = field(default_factory=lambda: _model("mtcnn_pnet"))
    rnet: ModelConfig = field(default_factory=lambda: _model("mtcnn_rnet"))
    onet: ModelConfig = field(default_factory=lambda: _model("mtcnn_onet"))


@dataclass
class FaceConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # What one request may make this service decode (see services/common/images.py).
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    tags: TagConfig = field(default_factory=TagConfig)
    retinaface: ModelConfig = field(
        default_factory=lambda: _model("face_retinaface", CPU_DETECTOR_BATCH)
    )
    mtcnn: MtcnnModels = field(default_factory=MtcnnModels)
    age: ModelConfig = field(default_factory=lambda: _model("face_age"))
    gender: ModelConfig = field(default_factory=lambda: _model("face_gender"))
    emotion: ModelConfig = field(default_factory=lambda: _model("face_emotion"))
