"""DetectionService: people boxes, count and tags from one batched SSDLite pass per image,
and pose keypoints of the largest people (one batched landmark pass per person)."""

from __future__ import annotations

import grpc
import numpy as np

from services.common.config import ConfigError
from services.common.images import ImageLimits
from services.common.options import MAX_POSES
from services.common.protos import box, decode_image
from services.common.rpc import grpc_method, request_deadline
from services.detect.config import DetectConfig
from services.detect.labels import display_names
from services.detect.pipeline import DetectPipeline
from services.detect.tags import PERSON, people_tags
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


class DetectServicer(detect_pb2_grpc.DetectionServiceServicer):
    def __init__(self, config: DetectConfig) -> None:
        pose = config.pose
        if not 1 <= pose.max_people <= MAX_POSES:
            raise ConfigError(f"pose.max_people must be 1..{MAX_POSES}, got {pose.max_people}")
        for key in ("min_pose_score", "min_keypoint_score"):
            if not 0 <= getattr(pose, key) <= 1:
                raise ConfigError(f"pose.{key} must be in [0, 1], got {getattr(pose, key)}")
        self.config = config
        self.pipeline = DetectPipeline.served(config)
        self.image_limits = ImageLimits.from_config(config.images)

    async def start(self) -> None:
        await self.pipeline.start()

    async def close(self) -> None:
        await self.pipeline.close()

    # The ranges of min_score, max_detections and max_poses are checked by the request guard
    # (services/common/options.py) before a call gets here; 0 means the service's setting.

    def _max_poses(self, request: detect_pb2.DetectObjectsRequest) -> int:
        """People to give keypoints: 0 when pose is off (service setting or ``no_pose``)."""
        if request.no_pose or not self.config.pose.enabled:
            return 0
        return request.max_poses or self.config.pose.max_people

    def _limits(self, request: detect_pb2.DetectObjectsRequest) -> tuple[float, int]:
        return (
            request.min_score or self.config.detector.min_score,
            request.max_detections or self.config.detector.max_detections,
        )

    @grpc_method
    async def DetectObjects(
        self, request: detect_pb2.DetectObjectsRequest, context: grpc.aio.ServicerContext
    ) -> detect_pb2.DetectObjectsResponse:
        min_score, max_detections = self._limits(request)
        max_poses = self._max_poses(request)
        rgb = (await decode_image(request.image, self.image_limits)).rgb
        found = await self.pipeline.detect(
            rgb, min_score, max_detections, request_deadline(context), max_poses
        )
        detections = []
        for i, (b, s, label) in enumerate(
            zip(found.boxes, found.scores, found.labels, strict=True)
        ):
            en, zh = display_names(label)
            detection = detect_pb2.Detection(
                box=box(*b), score=float(s), label=label, display_name_en=en, display_name_zh=zh
            )
            if i in found.poses:
                person = found.poses[i]
                detection.pose_score = person.score
                detection.keypoints.extend(
                    detect_pb2.Keypoint(name=k.name, x=k.x, y=k.y, score=k.score)
                    for k in person.keypoints
                )
            detections.append(detection)
        people = np.array([lab == PERSON for lab in found.labels], bool)
        tags = people_tags(
            found.boxes[people],
            found.scores[people],
            found.best_score,
            (rgb.shape[0], rgb.shape[1]),
            self.config.tags,
        )
        return detect_pb2.DetectObjectsResponse(
            detections=detections, people_count=int(people.sum()), tags=tags
        )
