"""Pixels -> the detector's input: the preprocessing of the graph it came from."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def to_input(rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x size x size`` float32.

    Resized to the square input without keeping the aspect ratio (as in training;
    boxes come back as fractions of each side), then ``(x - mean) * scale``.
    """
    size = int(spec["size"])
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if min(h, w) > 2 * size else cv2.INTER_LINEAR
    x = cv2.resize(rgb, (size, size), interpolation=interpolation).astype(np.float32)
    x = (x - float(spec["mean"])) * float(spec["scale"])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
