"""Face detection through served models: RetinaFace (default) or MTCNN.

RetinaFace runs once per image: the image is scaled into a bucket and padded
(``retinaface.py``): to the bucket's square with ``pad_to_square``, so images
of different sizes are one input shape and the batcher merges concurrent
calls into one batch, else only to a multiple of 32 (less work per image).

MTCNN (``detector.kind: mtcnn``): stage 1 runs P-Net on every pyramid level concurrently (each level
is its own
request; the batcher merges only same-size levels, e.g. the same image size
from concurrent calls). Stages 2 and 3 send all candidate crops of one image
as one request, which the batcher merges with other calls' crops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common.deadline import NO_DEADLINE, Deadline
from services.common.repository import ModelEntry
from services.face import mtcnn, retinaface
from services.face.config import DetectorConfig, RetinaFaceConfig


class Model(Protocol):
    """What the pipeline needs of a model: ``ServedModel`` (batched) or a bare session adapter."""

    entry: ModelEntry

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> dict[str, np.ndarray]: ...


@dataclass
class Detections:
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2
    scores: np.ndarray  # [N]
    landmarks: (
        np.ndarray
    )  # [N, 5, 2]: left eye, right eye, nose, left mouth, right mouth (image left/right)

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )

    def __len__(self) -> int:
        return len(self.scores)


class Detector(Protocol):
    async def detect(
        self,
        rgb: np.ndarray,
        min_face: float,
        max_faces: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> Detections: ...


class RetinaFaceDetector:
    def __init__(self, model: Model, config: RetinaFaceConfig) -> None:
        self.model = model
        self.config = config
        self.input_name = model.entry.inputs[0].name

    async def detect(
        self,
        rgb: np.ndarray,
        min_face: float,
        max_faces: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> Detections:
        h, w = rgb.shape[:2]
        side = retinaface.pick_bucket(h, w, self.config.buckets)
        x, box = await asyncio.to_thread(retinaface.letterbox, rgb, side, self.config.pad_to_square)
        out = await self.model.infer({self.input_name: x}, deadline)
        return await asyncio.to_thread(self._select, out, box, (h, w), min_face, max_faces)

    def _select(
        self,
        out: dict[str, np.ndarray],
        box: retinaface.Letterbox,
        shape: tuple[int, int],
        min_face: float,
        max_faces: int,
    ) -> Detections:
        scores = out["conf"][0, :, 1]
        keep = np.nonzero(scores >= self.config.score_threshold)[0]
        if len(keep) == 0:
            return Detections.empty()
        boxes, points = retinaface.decode(
            out["loc"][0, keep],
            out["landmarks"][0, keep],
            retinaface.priors(box.height, box.width)[keep],
        )
        scores = scores[keep]
        boxes /= box.scale
        points /= box.scale
        keep = mtcnn.nms(boxes, scores, self.config.nms_iou)
        # Faces smaller than the caller's floor are dropped (the contract MTCNN's pyramid keeps).
        sides = np.maximum(boxes[keep, 2] - boxes[keep, 0], boxes[keep, 3] - boxes[keep, 1])
        keep = keep[sides >= min_face][:max_faces]
        h, w = shape
        boxes = boxes[keep]
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        return Detections(
            boxes.astype(np.float32),
            scores[keep].astype(np.float32),
            points[keep].astype(np.float32),
        )


class MtcnnDetector:
    def __init__(self, pnet: Model, rnet: Model, onet: Model, config: DetectorConfig) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.config = config

    async def detect(
        self,
        rgb: np.ndarray,
        min_face: float,
        max_faces: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> Detections:
        t1, t2, t3 = self.config.thresholds
        h, w = rgb.shape[:2]
        scales = mtcnn.pyramid_scales(h, w, min_face, self.config.scale_factor)
        if not scales:
            return Detections.empty()
        levels = await asyncio.to_thread(
            lambda: [mtcnn.normalise(level) for level in mtcnn.pyramid(rgb, scales)]
        )
        maps = await asyncio.gather(
            *(self.pnet.infer({"images": level}, deadline) for level in levels)
        )
        boxes, scores, regs = await asyncio.to_thread(_stage1, maps, scales, t1)
        if len(boxes) == 0:
            return Detections.empty()

        boxes = mtcnn.square(mtcnn.regress(boxes, regs, inclusive=False))
        out = await self.rnet.infer(
            {"images": mtcnn.normalise(await asyncio.to_thread(mtcnn.crops, rgb, boxes, 24))},
            deadline,
        )
        keep = out["prob"] >= t2
        boxes, scores, regs = boxes[keep], out["prob"][keep], out["reg"][keep]
        keep = mtcnn.nms(boxes, scores, 0.7)
        boxes = mtcnn.square(mtcnn.regress(boxes[keep], regs[keep]))
        if len(boxes) == 0:
            return Detections.empty()

        out = await self.onet.infer(
            {"images": mtcnn.normalise(await asyncio.to_thread(mtcnn.crops, rgb, boxes, 48))},
            deadline,
        )
        keep = out["prob"] >= t3
        boxes, scores, regs, points = (
            boxes[keep],
            out["prob"][keep],
            out["reg"][keep],
            out["landmarks"][keep],
        )
        side_w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        side_h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = side_w * points[:, :5] + boxes[:, :1] - 1
        ys = side_h * points[:, 5:] + boxes[:, 1:2] - 1
        landmarks = np.stack([xs, ys], axis=2)
        boxes = mtcnn.regress(boxes, regs)
        keep = mtcnn.nms(boxes, scores, 0.7, mode="min")
        # The pyramid starts at min_face, but regression can shrink a box below it: enforce the
        # contract.
        sides = np.maximum(boxes[keep, 2] - boxes[keep, 0], boxes[keep, 3] - boxes[keep, 1])
        keep = keep[sides >= min_face][:max_faces]
        boxes = boxes[keep]
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        return Detections(
            boxes.astype(np.float32),
            scores[keep].astype(np.float32),
            landmarks[keep].astype(np.float32),
        )


def _stage1(
    maps: list[dict[str, np.ndarray]], scales: list[float], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    all_boxes, all_scores, all_regs = [], [], []
    for out, scale in zip(maps, scales, strict=True):
        boxes, scores, regs = mtcnn.proposals(out["prob"][0], out["reg"][0], scale, threshold)
        keep = mtcnn.nms(boxes, scores, 0.5)
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_regs.append(regs[keep])
    boxes, scores, regs = (
        np.concatenate(all_boxes),
        np.concatenate(all_scores),
        np.concatenate(all_regs),
    )
    keep = mtcnn.nms(boxes, scores, 0.7)
    return boxes[keep], scores[keep], regs[keep]
