"""SSD's box arithmetic (no models): anchors, box decoding, non-maximum suppression.

The anchors are those of the TensorFlow Object Detection API's SSD anchor
generator with the ssdlite_mobilenet_v2_coco settings: six feature maps
(19, 10, 5, 3, 2, 1 cells for a 300 px input), scales spread linearly from
0.2 to 0.95, aspect ratios 1, 2, 1/2, 3, 1/3 plus one box between this scale
and the next; the lowest map has only three boxes (0.1 at 1:1, 2:1, 1:2).
Within a map the order is row, column, box: the order of the predictor's
reshaped outputs. Boxes are coded as Faster R-CNN offsets scaled by
(10, 10, 5, 5). Everything is in fractions of the (square) input.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

FEATURE_MAPS = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
LOWEST_LAYER_BOXES = ((0.1, 1.0), (MIN_SCALE, 2.0), (MIN_SCALE, 0.5))
# ty, tx, th, tw divisors of the box coder.
SCALE_FACTORS = np.array([10.0, 10.0, 5.0, 5.0], np.float32)


def box_specs() -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of each anchor of a cell, per feature map."""
    n = len(FEATURE_MAPS)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (n - 1) for i in range(n)] + [1.0]
    specs = [list(LOWEST_LAYER_BOXES)]
    for i in range(1, n):
        layer = [(scales[i], ar) for ar in ASPECT_RATIOS]
        layer.append((math.sqrt(scales[i] * scales[i + 1]), 1.0))
        specs.append(layer)
    return specs


@lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """``[A, 4]`` anchors as (centre y, centre x, height, width), fractions of the input."""
    out = []
    for cells, specs in zip(FEATURE_MAPS, box_specs(), strict=True):
        hw = np.array([[s / math.sqrt(ar), s * math.sqrt(ar)] for s, ar in specs], np.float64)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = (np.stack([ys.ravel(), xs.ravel()], axis=1) + 0.5) / cells
        out.append(
            np.concatenate(
                [np.repeat(centres, len(specs), axis=0), np.tile(hw, (cells * cells, 1))], axis=1
            )
        )
    return np.concatenate(out).astype(np.float32)


def decode(codes: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``[N, 4]`` offsets (ty, tx, th, tw) of ``N`` anchors -> boxes (x1, y1, x2, y2), fractions."""
    t = codes / SCALE_FACTORS
    cy = t[:, 0] * anchor[:, 2] + anchor[:, 0]
    cx = t[:, 1] * anchor[:, 3] + anchor[:, 1]
    h = np.exp(t[:, 2]) * anchor[:, 2]
    w = np.exp(t[:, 3]) * anchor[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of ``others``."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression; indices of at most ``limit`` kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= threshold]
    return np.asarray(keep, np.int64)
