"""The detection pipeline: resize, run the served detector, decode anchors, NMS.

Runs on anything shaped like ``ServedModel`` (the service's batched model or
the benchmark's bare session).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common.deadline import NO_DEADLINE, Deadline
from services.common.models import ServedModel
from services.common.pipeline import Pipeline
from services.common.repository import ModelEntry
from services.detect import ssd
from services.detect.config import DetectConfig
from services.detect.preprocess import to_input


class Model(Protocol):
    """What the pipeline needs of a model: ``ServedModel`` (batched) or a bare session adapter."""

    entry: ModelEntry

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> dict[str, np.ndarray]: ...


@dataclass
class Found:
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 in image pixels
    scores: np.ndarray  # [N]
    labels: list[str]
    # Best score of any anchor for any class (how sure "nothing" is when N = 0).
    best_score: float


class DetectPipeline(Pipeline):
    def __init__(self, model: Model, nms_iou: float, owned: Iterable[ServedModel] = ()) -> None:
        super().__init__(owned)
        self.model = model
        self.nms_iou = nms_iou
        self.labels = model.entry.labels()
        self.spec = model.entry.preprocessing

    @classmethod
    def served(cls, config: DetectConfig) -> DetectPipeline:
        """The pipeline on the batched served detector (owned: started and closed with it)."""
        model = ServedModel(config.person)
        return cls(model, config.detector.nms_iou, owned=[model])

    async def detect(
        self,
        rgb: np.ndarray,
        min_score: float,
        max_detections: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> Found:
        x = await asyncio.to_thread(to_input, rgb, self.spec)
        out = await self.model.infer({"images": x}, deadline)
        return await asyncio.to_thread(self._select, out, rgb.shape[:2], min_score, max_detections)

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
