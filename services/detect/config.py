"""Settings of the detection service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import BatcherConfig, ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("detect").default_port


CPU_MAX_BATCH = 2


def _cpu_batched(name: str) -> ModelConfig:
    return ModelConfig(name=name, batcher=BatcherConfig(max_batch_size=CPU_MAX_BATCH))


@dataclass
class DetectorConfig:
    # Score floor of a returned detection. 0.45 counts the six people of the campus walkway
    # frame (lowest 0.47) and five of the six of the group photo (sixth 0.32); on 104 sample
    # photos the only boxes above it without a person are a close-up apple and orange (0.72,
    # 0.71). See docs/detect.md.
    min_score: float = 0.45
    max_detections: int = 100
    # Two boxes overlapping more than this (IoU) are one object.
    nms_iou: float = 0.6


@dataclass
class TagConfig:
    # "people/close-up": the largest person box covers at least this share of the frame.
    close_up_share: float = 0.3
    # "people/crowd": this many people, or a dense scene: at least dense_min people whose
    # boxes together cover dense_coverage of the frame.
    crowd_min: int = 10
    dense_min: int = 8
    dense_coverage: float = 0.4


@dataclass
class PoseConfig:
    # Pose keypoints for detected people (a request may turn them off with no_pose).
    enabled: bool = True
    # The largest people (by box area) that get keypoints, unless a request asks fewer or more
    # (up to services/common/options.MAX_POSES). Each is one 256 x 256 landmark model input.
    max_people: int = 4
    # A person's keypoints are returned when the model's pose presence is at least this.
    min_pose_score: float = 0.5
    # ...and each keypoint when its visibility and presence probabilities are at least this.
    # 0.7: on the group photo (people seated behind a table) the knees and ankles the model
    # invents score 0.13-0.69; the walkers' of the campus frame mostly 0.7-0.99.
    min_keypoint_score: float = 0.7


@dataclass
class DetectConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # What one request may make this service decode (see services/common/images.py).
    images: ImageLimitsConfig = field(default_factory=ImageLimitsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tags: TagConfig = field(default_factory=TagConfig)
    # Every image becomes one 300 x 300 input, so concurrent calls can batch together; one
    # 256 x 256 crop per person for the pose model. Batches of 2 at most on CPU (an explicit
    # override of the models' policy, max 16: services/detect/export.py): on ONNX Runtime CPU
    # both mobile networks cost more per image in larger batches (measured here, 1 thread:
    # SSDLite 20.5 ms per image alone, 22.2 in pairs, 26.5 in batches of 16; the landmark
    # model 12.3 / 11.6 / 15.6). GPU deployments set ``batcher.max_batch_size: 16`` on both.
    person: ModelConfig = field(default_factory=lambda: _cpu_batched("person_ssdlite"))
    pose: PoseConfig = field(default_factory=PoseConfig)
    pose_landmark: ModelConfig = field(default_factory=lambda: _cpu_batched("pose_landmark_full"))
