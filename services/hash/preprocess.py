"""Image -> EfficientNet-Lite0 input, with the constants from the model's config.yaml.

The same resize / centre-crop / normalisation as the classify service (services
do not import each other), so the ``features`` output means the same here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def center_crop(rgb: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Resize the short side to ``size / crop_fraction``, then take the centre ``size`` square."""
    h, w = rgb.shape[:2]
    scale = (size / crop_fraction) / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def to_batch(frames: list[np.ndarray], prep: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 frames -> ``N x 3 x S x S`` float32, normalised as the model was trained."""
    size = int(prep["size"])
    fraction = float(prep.get("crop_fraction", 0.875))
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    crops = np.stack([center_crop(f, size, fraction) for f in frames]).astype(np.float32)
    return np.ascontiguousarray(((crops - mean) / std).transpose(0, 3, 1, 2))
