"""The OCR pipeline on served models: detect -> crop -> direction -> recognise.

Every model call goes through a ``ServedModel`` (dynamic batcher + engine), so
the same code runs on ONNX Runtime, torch or TensorRT. Recognition crops are
padded to a width bucket and submitted per bucket: crops of similar width
from concurrent requests then share one batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.deadline import NO_DEADLINE, Deadline
from services.common.pipeline import Pipeline
from services.ocr.config import OcrConfig
from services.ocr.detection import TextBox, boxes_from_probability, prepare, reading_order, row_ids
from services.ocr.line_filter import is_long, keep_line
from services.ocr.recognition import CtcDecoder, crop_quad, direction_input, recognition_input

# Below this pixel standard deviation an image is one flat colour: no text to find.
BLANK_STD = 1.0


@dataclass(frozen=True)
class RecognizedLine:
    text: str
    confidence: float
    quad: np.ndarray  # 4 x 2, image pixels, tl/tr/br/bl
    angle: int  # 0 or 180
    box_score: float


class OcrPipeline(Pipeline):
    def __init__(self, config: OcrConfig) -> None:
        super().__init__()
        self.config = config
        self.detector = self.serve(config.detector)
        self.direction = self.serve(config.direction)
        self.recognizer = self.serve(config.recognizer)
        self.decoder = CtcDecoder(
            self.recognizer.entry.file(
                str(self.recognizer.entry.extra.get("dictionary", "dict.txt"))
            )
        )
        self.rec_height = int(self.recognizer.entry.preprocessing.get("height", 48))

    async def detect(self, bgr: np.ndarray, deadline: Deadline) -> list[TextBox]:
        cfg = self.config.detection
        det = await asyncio.to_thread(prepare, bgr, cfg)
        out = await self.detector.infer({"x": det.tensor}, deadline)
        prob = next(iter(out.values()))[0, 0]
        boxes = await asyncio.to_thread(boxes_from_probability, prob, det, bgr.shape[:2], cfg)
        return reading_order(boxes)

    async def _directions(self, crops: list[np.ndarray], deadline: Deadline) -> list[int]:
        if not self.config.recognition.use_direction:
            return [0] * len(crops)
        batch = np.concatenate([direction_input(c) for c in crops])
        out = await self.direction.infer({"x": batch}, deadline)
        probs = next(iter(out.values()))
        threshold = self.config.recognition.direction_threshold
        return [180 if p.argmax() == 1 and p[1] > threshold else 0 for p in probs]

    async def _recognise(
        self, crops: list[np.ndarray], deadline: Deadline
    ) -> list[tuple[str, float]]:
        buckets = self.config.recognition.width_buckets
        inputs = [recognition_input(c, self.rec_height, buckets) for c in crops]
        by_width: dict[int, list[int]] = {}
        for i, x in enumerate(inputs):
            by_width.setdefault(x.shape[-1], []).append(i)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)

        async def run_bucket(indices: list[int]) -> None:
            out = await self.recognizer.infer(
                {"x": np.concatenate([inputs[i] for i in indices])}, deadline
            )
            probs = next(iter(out.values()))
            for row, i in enumerate(indices):
                results[i] = self.decoder.decode(probs[row])

        await asyncio.gather(*(run_bucket(ix) for ix in by_width.values()))
        return results

    async def recognise(
        self,
        rgb: np.ndarray,
        min_confidence: float,
        max_lines: int,
        deadline: Deadline = NO_DEADLINE,
    ) -> list[RecognizedLine]:
        limits = self.config.limits
        # Every 4th pixel is plenty to tell a flat image, at 1/16 of the cost on big ones.
        if min(rgb.shape[:2]) < limits.min_image_side or float(rgb[::4, ::4].std()) < BLANK_STD:
            return []
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        boxes = await self.detect(bgr, deadline)
        if not boxes:
            return []
        crops = await asyncio.to_thread(lambda: [crop_quad(bgr, b.quad) for b in boxes])
        angles = await self._directions(crops, deadline)
        crops = [
            cv2.rotate(c, cv2.ROTATE_180) if a == 180 else c
            for c, a in zip(crops, angles, strict=True)
        ]
        texts = await self._recognise(crops, deadline)
        rows = row_ids(boxes)
        long_rows = {
            row
            for row, (text, conf) in zip(rows, texts, strict=True)
            if conf >= min_confidence and is_long(text, limits)
        }
        lines = [
            RecognizedLine(text, conf, box.quad, angle, box.score)
            for box, angle, row, (text, conf) in zip(boxes, angles, rows, texts, strict=True)
            if keep_line(
                text, conf, box.score, min_confidence, limits, beside_long_line=row in long_rows
            )
        ]
        return lines[:max_lines]
