"""Settings of the detection service."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ImageLimitsConfig, ModelConfig, ServerConfig
from visionmesh import features

DEFAULT_PORT = features.by_name("detect").default_port


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
    # Every image becomes one 300 x 300 input, so all concurrent calls batch together.
    # Batching policy: the model's own (services/detect/export.py).
    person: ModelConfig = field(default_factory=lambda: ModelConfig(name="person_ssdlite"))
    pose: PoseConfig = field(default_factory=PoseConfig)
    # One 256 x 256 crop per person: the crops of concurrent calls batch together.
    pose_landmark: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="pose_landmark_full")
    )
