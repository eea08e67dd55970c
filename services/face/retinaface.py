"""RetinaFace's box arithmetic (no models): letterbox buckets, prior boxes, decoding.

The network (RetinaFace with a MobileNet-0.25 backbone) predicts, for every
prior box of three feature maps (strides 8, 16, 32; two square priors per cell:
16/32, 64/128, 256/512 px), a face probability, box offsets and five landmark
offsets, all relative to the prior with SSD's variances (0.1 for centres,
0.2 for log sizes). Its input is BGR minus the training mean, NCHW.

Every image is scaled to fit a bucket (the smallest configured side that
holds it) and padded: to the bucket's square, so images of any size share one
input shape and the batcher can merge them, or only to the next multiple of
32 (the coarsest stride), which saves the network up to half its work on wide
or tall photos (its cost is proportional to the input's area).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

STRIDES = (8, 16, 32)
PRIOR_SIZES = ((16.0, 32.0), (64.0, 128.0), (256.0, 512.0))
CENTRE_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
# BGR mean of the training images (WIDER FACE), subtracted from the input.
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)


# Input sides are padded to a multiple of the coarsest stride, so every feature map is whole.
ALIGN = STRIDES[-1]


@dataclass(frozen=True)
class Letterbox:
    """Where an image went inside the network input: pixels there = pixels here * scale."""

    height: int
    width: int
    scale: float


def pick_bucket(height: int, width: int, buckets: list[int]) -> int:
    """The smallest bucket that holds the long side, else the largest (the image is shrunk)."""
    long_side = max(height, width)
    for side in sorted(buckets):
        if long_side <= side:
            return side
    return max(buckets)


def letterbox(rgb: np.ndarray, side: int, square: bool = True) -> tuple[np.ndarray, Letterbox]:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x h x w`` float32 input (BGR - mean).

    Scaled to fit ``side`` (up or down), top-left aligned; the padding is zero
    after the mean is subtracted, i.e. the mean colour the network saw as
    background. ``square``: ``h = w = side``; otherwise each of ``h``, ``w`` is
    the scaled size rounded up to a multiple of ``ALIGN``.
    """
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    nw, nh = max(1, min(side, round(w * scale))), max(1, min(side, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interpolation) if scale != 1 else rgb
    out_h, out_w = (side, side) if square else (-(-nh // ALIGN) * ALIGN, -(-nw // ALIGN) * ALIGN)
    # One pass per colour plane straight into the NCHW input (BGR order): no float HWC copy.
    x = np.zeros((1, 3, out_h, out_w), np.float32)
    for plane in range(3):
        np.subtract(
            resized[..., 2 - plane], BGR_MEAN[plane], out=x[0, plane, :nh, :nw], dtype=np.float32
        )
    return x, Letterbox(out_h, out_w, scale)


@lru_cache(maxsize=16)
def priors(height: int, width: int | None = None) -> np.ndarray:
    """``[P, 4]`` prior boxes (centre x, centre y, w, h) in pixels of a ``height x width`` input
    (square when ``width`` is None), in the network's output order: feature map, then row,
    column, then prior size."""
    width = height if width is None else width
    out = []
    for stride, sizes in zip(STRIDES, PRIOR_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)  # ceil: the network pads odd maps
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        for_cell = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.repeat(np.asarray(sizes)[:, None], 2, axis=1), (rows * cols, 1))
        out.append(np.concatenate([for_cell, wh], axis=1))
    return np.concatenate(out).astype(np.float32)


def decode(
    loc: np.ndarray, landmarks: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of ``N`` priors -> boxes ``[N, 4]`` (x1, y1, x2, y2) and landmarks ``[N, 5, 2]``."""
    centre = prior[:, :2] + loc[:, :2] * CENTRE_VARIANCE * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * SIZE_VARIANCE)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    points = prior[:, None, :2] + landmarks.reshape(-1, 5, 2) * CENTRE_VARIANCE * prior[:, None, 2:]
    return boxes, points
