"""Crops, direction-classifier and recogniser inputs, and CTC decoding."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from services.ocr.detection import normalise

CLS_HEIGHT, CLS_WIDTH = 48, 192


def crop_quad(bgr: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective-rectify the quadrilateral ``quad`` (tl, tr, br, bl) into an upright strip."""
    width = max(1, int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]))))
    height = max(1, int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    crop = cv2.warpPerspective(
        bgr, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if height >= 1.5 * width:
        # A tall strip is vertical text: lay it on its side for the line recogniser.
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def _resize_pad(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` keeping aspect (at most ``width`` wide), normalise, zero-pad on the
    right."""
    h, w = crop.shape[:2]
    resized_w = min(width, max(1, math.ceil(height * w / h)))
    resized = cv2.resize(crop, (resized_w, height), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = normalise(resized)
    return out


def direction_input(crop: np.ndarray) -> np.ndarray:
    """Crop -> 1 x 3 x 48 x 192, the direction classifier's fixed input."""
    return _resize_pad(crop, CLS_HEIGHT, CLS_WIDTH)[None]


def width_bucket(crop_hw: tuple[int, int], height: int, buckets: list[int]) -> int:
    """The smallest bucket that holds the crop resized to ``height``; the widest one otherwise."""
    h, w = crop_hw
    needed = math.ceil(height * w / max(h, 1))
    for bucket in sorted(buckets):
        if needed <= bucket:
            return bucket
    return max(buckets)


def recognition_input(crop: np.ndarray, height: int, buckets: list[int]) -> np.ndarray:
    """Crop -> 1 x 3 x height x bucket width (right-padded, as PaddleOCR pads batches)."""
    return _resize_pad(crop, height, width_bucket(crop.shape[:2], height, buckets))[None]


class CtcDecoder:
    """Greedy CTC decoding over the PP-OCR dictionary (index 0 = blank, last index = space)."""

    def __init__(self, dictionary: Path) -> None:
        characters = dictionary.read_text(encoding="utf-8").split("\n")
        if characters and characters[-1] == "":
            characters.pop()
        self.characters = ["", *characters, " "]

    def __len__(self) -> int:
        return len(self.characters)

    def decode(self, probs: np.ndarray) -> tuple[str, float]:
        """``T x C`` per-step class probabilities -> (text, mean probability of the kept steps)."""
        best = probs.argmax(axis=1)
        best_prob = probs[np.arange(len(best)), best]
        keep = best != 0
        keep[1:] &= best[1:] != best[:-1]
        if not keep.any():
            return "", 0.0
        text = "".join(self.characters[i] for i in best[keep])
        return text, float(best_prob[keep].mean())
