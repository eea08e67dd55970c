"""The detection pipeline: resize, run the served detector, decode anchors, NMS; then pose
keypoints for the largest people (one landmark model crop each, ``pose.py``).

Runs on anything shaped like ``ServedModel`` (the service's batched model or
the benchmark's bare session).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.deadline import NO_DEADLINE, Deadline
from services.common.models import ServedModel
from services.common.pipeline import Pipeline
from services.common.repository import ModelEntry
from services.detect import pose, ssd
from services.detect.config import DetectConfig, PoseConfig
from services.detect.preprocess import to_input
from services.detect.tags import PERSON


class Model(Protocol):
    """What the pipeline needs of a model: ``ServedModel`` (batched) or a bare session adapter."""

    entry: ModelEntry

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> dict[str, np.ndarray]: ...


@dataclass
class Pose:
    score: float  # the model's pose presence probability
    keypoints: list[pose.Keypoint]


@dataclass
class Found:
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 in image pixels
    scores: np.ndarray  # [N]
    labels: list[str]
    # Best score of any anchor for any class (how sure "nothing" is when N = 0).
    best_score: float
    # Detection index -> its pose, for the people the pose model ran on.
    poses: dict[int, Pose] = field(default_factory=dict)


class DetectPipeline(Pipeline):
    def __init__(
        self,
        model: Model,
        nms_iou: float,
        owned: Iterable[ServedModel] = (),
        pose_model: Model | None = None,
        pose_config: PoseConfig | None = None,
    ) -> None:
        super().__init__(owned)
        self.model = model
        self.nms_iou = nms_iou
        self.labels = model.entry.labels()
        self.spec = model.entry.preprocessing
        self.pose_model = pose_model
        self.pose_config = pose_config or PoseConfig()

    @classmethod
    def served(cls, config: DetectConfig) -> DetectPipeline:
        """The pipeline on the batched served models (owned: started and closed with it)."""
        model = ServedModel(config.person)
        if not config.pose.enabled:
            return cls(model, config.detector.nms_iou, owned=[model])
        landmarks = ServedModel(config.pose_landmark)
        return cls(
            model,
            config.detector.nms_iou,
            owned=[model, landmarks],
            pose_model=landmarks,
            pose_config=config.pose,
        )

    async def detect(
        self,
        rgb: np.ndarray,
        min_score: float,
        max_detections: int,
        deadline: Deadline = NO_DEADLINE,
        max_poses: int = 0,
    ) -> Found:
        """Detections best first; with ``max_poses`` the poses of that many largest people."""
        x = await asyncio.to_thread(to_input, rgb, self.spec)
        out = await self.model.infer({"images": x}, deadline)
        found = await asyncio.to_thread(self._select, out, rgb.shape[:2], min_score, max_detections)
        if self.pose_model is not None and max_poses > 0:
            found.poses = await self._poses(rgb, found, max_poses, deadline)
        return found

    async def _poses(
        self, rgb: np.ndarray, found: Found, limit: int, deadline: Deadline
    ) -> dict[int, Pose]:
        assert self.pose_model is not None
        people = np.array([i for i, lab in enumerate(found.labels) if lab == PERSON], np.int64)
        if len(people) == 0:
            return {}
        chosen = people[pose.largest(found.boxes[people], limit)]
        rois = [pose.roi(found.boxes[i]) for i in chosen]

        def crops() -> np.ndarray:
            # At most options.MAX_POSES crops of 256 x 256 x 3 floats (786 KB each).
            batch = np.stack([pose.crop(rgb, r) for r in rois])
            return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

        out = await self.pose_model.infer({"images": await asyncio.to_thread(crops)}, deadline)
        cfg, shape = self.pose_config, (rgb.shape[0], rgb.shape[1])
        poses = {}
        for row, (i, r) in enumerate(zip(chosen, rois, strict=True)):
            score = float(out["pose_score"][row, 0])
            points: list[pose.Keypoint] = []
            if score >= cfg.min_pose_score:
                points = pose.decode(out["keypoints"][row], r, shape, cfg.min_keypoint_score)
            poses[int(i)] = Pose(score, points)
        return poses

    def _select(
        self,
        out: dict[str, np.ndarray],
        shape: tuple[int, ...],
        min_score: float,
        max_detections: int,
    ) -> Found:
        codes, scores = out["box_encodings"][0], out["scores"][0]
        anchors = ssd.anchors()
        h, w = shape[0], shape[1]
        scale = np.array([w, h, w, h], np.float32)
        all_boxes, all_scores, all_labels = [], [], []
        for c, label in enumerate(self.labels):  # per-class NMS, as the graph's post-processor
            keep = np.nonzero(scores[:, c] >= min_score)[0]
            if len(keep) == 0:
                continue
            boxes = ssd.decode(codes[keep], anchors[keep])
            kept = ssd.nms(boxes, scores[keep, c], self.nms_iou, max_detections)
            all_boxes.append(np.clip(boxes[kept], 0.0, 1.0) * scale)
            all_scores.append(scores[keep[kept], c])
            all_labels += [label] * len(kept)
        best = float(scores.max()) if scores.size else 0.0
        if not all_boxes:
            return Found(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [], best)
        boxes_px, score_arr = np.concatenate(all_boxes), np.concatenate(all_scores)
        order = np.argsort(-score_arr, kind="stable")[:max_detections]
        return Found(
            boxes_px[order].astype(np.float32),
            score_arr[order].astype(np.float32),
            [all_labels[i] for i in order],
            best,
        )
