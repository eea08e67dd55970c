"""Image -> model input for the content classifier (EfficientNet-Lite0).

This runs once per image on the request path, so it works on the centre
square only and uses OpenCV's resize (several times faster than PIL's here).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def center_crop(rgb: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """The centre square a "short side to ``size / crop_fraction``, crop ``size``" pipeline keeps,
    at ``size`` px.

    Cropping first and resizing once is the same geometry with far fewer pixels resized.
    """
    h, w = rgb.shape[:2]
    side = max(1, round(min(h, w) * crop_fraction))
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    # Area averaging when shrinking a lot (no aliasing), bilinear otherwise.
    interpolation = cv2.INTER_AREA if side > 2 * size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def to_tensor(rgb: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``1 x 3 x S x S`` float32, normalised as the model was trained."""
    size = int(prep["size"])
    crop = center_crop(rgb, size, float(prep.get("crop_fraction", 0.875)))
    out = np.empty((1, 3, size, size), np.float32)
    for channel, (mean, std) in enumerate(zip(prep["mean"], prep["std"], strict=True)):
        plane = out[0, channel]
        np.subtract(crop[:, :, channel], np.float32(mean), out=plane, casting="unsafe")
        plane *= np.float32(1.0 / std)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
