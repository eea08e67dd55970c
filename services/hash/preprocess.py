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
    """The centre square a "short side to ``size / crop_fraction``, crop ``size``" pipeline keeps,
    at ``size`` px.

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
    """``H x W x 3`` uint8 frames -> ``N x 3 x S x S`` float32, normalised as the model was
    trained."""
    size = int(prep["size"])
    fraction = float(prep.get("crop_fraction", 0.875))
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    crops = np.stack([center_crop(f, size, fraction) for f in frames]).astype(np.float32)
    return np.ascontiguousarray(((crops - mean) / std).transpose(0, 3, 1, 2))


def trim_borders(rgb: np.ndarray, tolerance: int = 16, keep: float = 0.1) -> np.ndarray:
    """Cut letterbox / pillarbox bars: edge rows and columns of one flat colour.

    Standard before fingerprinting video: the same picture re-encoded into another
    aspect ratio gets bars that otherwise dominate a centre crop. A row (column) is a
    bar while every pixel in it is within ``tolerance`` of the image's corner colour;
    at least ``keep`` of each side length is always kept, so a flat image stays whole.
    """
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return rgb
    pixels = rgb.astype(np.int16)
    corner = pixels[0, 0]
    flat = np.abs(pixels - corner).max(axis=2) <= tolerance
    rows, cols = flat.all(axis=1), flat.all(axis=0)

    def span(is_bar: np.ndarray) -> tuple[int, int]:
        n = len(is_bar)
        content = np.flatnonzero(~is_bar)
        if len(content) == 0:
            return 0, n
        start, stop = int(content[0]), int(content[-1]) + 1
        if stop - start < max(1, round(n * keep)):
            return 0, n
        return start, stop

    top, bottom = span(rows)
    left, right = span(cols)
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def normalise_view(rgb: np.ndarray, trim: bool, grey: bool) -> np.ndarray:
    """The view the hash features are computed from: bars trimmed, colour dropped (each optional).

    Both are chosen when the projection is trained (the ``view`` section of the ``hash_itq``
    entry's config.yaml), so codes and projection always agree.
    """
    if trim:
        rgb = trim_borders(rgb)
    if grey:
        luma = np.asarray(Image.fromarray(rgb).convert("L"))
        rgb = np.repeat(luma[:, :, None], 3, axis=2)
    return rgb
