"""Image -> EfficientNet-Lite0 input, with the constants from the model's config.yaml.

The same resize / centre-crop / normalisation as the classify service (services
do not import each other), so the ``features`` output means the same here.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image


def center_crop(rgb: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """The centre square a "short side to ``size / crop_fraction``, crop ``size``" pipeline keeps, at ``size`` px.

    Cropping first (a view, no copy) and resizing once is the same geometry, and
    the cost follows the output: resizing the whole image first made a 1 x 20000
    image a 256 x 5,120,000 intermediate (+508 MB).
    """
    h, w = rgb.shape[:2]
    side = max(1, round(min(h, w) * crop_fraction))
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side > 4 * size:
        # Box-average a large crop down to twice the output first (reads the view, copies
        # nothing big), as PIL's own reducing_gap does; the final filter stays PIL's.
        square = cv2.resize(square, (2 * size, 2 * size), interpolation=cv2.INTER_AREA)
    # PIL's antialiased bilinear, the filter the projection was trained with.
    img = Image.fromarray(np.ascontiguousarray(square)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(img)


def to_batch(frames: list[np.ndarray], prep: dict[str, Any]) -> np.ndarray:
    """``H x W x 3`` uint8 frames -> ``N x 3 x S x S`` float32, normalised as the model was trained."""
    size = int(prep["size"])
    fraction = float(prep.get("crop_fraction", 0.875))
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    crops = np.stack([center_crop(f, size, fraction) for f in frames]).astype(np.float32)
    return np.ascontiguousarray(((crops - mean) / std).transpose(0, 3, 1, 2))
