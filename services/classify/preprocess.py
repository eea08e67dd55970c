"""Image -> model input for the content classifier (EfficientNet-Lite0)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def center_crop(rgb: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Resize the short side to ``size / crop_fraction``, then take the centre ``size`` square."""
    h, w = rgb.shape[:2]
    short = size / crop_fraction
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def to_tensor(rgb: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``1 x 3 x S x S`` float32, normalised as the model was trained."""
    size = int(prep["size"])
    crop = center_crop(rgb, size, float(prep.get("crop_fraction", 0.875)))
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    x = (crop.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
