"""Pose keypoints of detected people (no models here): person crops and keypoint decoding.

Each person box the detector found becomes one square crop centred on the box,
``ROI_SCALE`` times its longer side (the landmark model expects the whole body
with a margin, upright), resized to the model's 256 x 256 input, RGB in [0, 1];
parts of the square outside the image are black. The model answers 33
keypoints in crop pixels with a visibility probability each, and a pose
presence probability; ``decode`` maps them back to image pixels and keeps the
confident ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INPUT_SIZE = 256
# Side of the crop / longer side of the person box.
ROI_SCALE = 1.25
# MediaPipe's pose landmark order (BlazePose GHUM topology).
KEYPOINT_NAMES = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
# Columns of the served model's keypoint output.
X, Y, VISIBILITY, PRESENCE = 0, 1, 3, 4
# Hips and below.
LOWER_BODY = frozenset(KEYPOINT_NAMES[KEYPOINT_NAMES.index("left_hip") :])
HIPS = ("left_hip", "right_hip")
KNEES = ("left_knee", "right_knee")
# A leg point is kept only with the joint above it on the same leg.
LEG_PARENT = {
    f"{side}_{child}": f"{side}_{parent}"
    for side in ("left", "right")
    for child, parent in (
        ("ankle", "knee"),
        ("heel", "ankle"),
        ("foot_index", "ankle"),
    )
}


@dataclass(frozen=True)
class Roi:
    """A square in image pixels: top-left corner and side."""

    x0: float
    y0: float
    side: float


@dataclass(frozen=True)
class Keypoint:
    name: str
    x: float  # image pixels
    y: float
    score: float  # the model's visibility probability


def roi(box: np.ndarray) -> Roi:
    """The square crop around one ``x1, y1, x2, y2`` person box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * ROI_SCALE
    return Roi((x1 + x2 - side) / 2, (y1 + y2 - side) / 2, side)


def crop(rgb: np.ndarray, r: Roi, size: int = INPUT_SIZE) -> np.ndarray:
    """``size x size x 3`` float32 in [0, 1]: the square ``r`` of ``rgb``, black outside it."""
    h, w = rgb.shape[:2]
    # Only the part of the image inside the square is read (a large image is never copied).
    ix0, iy0 = max(0, int(np.floor(r.x0))), max(0, int(np.floor(r.y0)))
    ix1 = min(w, int(np.ceil(r.x0 + r.side)))
    iy1 = min(h, int(np.ceil(r.y0 + r.side)))
    if ix1 <= ix0 or iy1 <= iy0:
        return np.zeros((size, size, 3), np.float32)
    patch = rgb[iy0:iy1, ix0:ix1]
    scale = size / r.side
    sx = sy = 1.0
    if scale < 0.5:  # shrink by area first: a bilinear warp alone would alias
        pw, ph = max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale))
        sx, sy = pw / patch.shape[1], ph / patch.shape[0]
        patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA)
    # Patch pixel (u, v) is image pixel (ix0 + u / sx, iy0 + v / sy).
    m = np.array(
        [
            [scale / sx, 0.0, (ix0 - r.x0) * scale],
            [0.0, scale / sy, (iy0 - r.y0) * scale],
        ],
        np.float64,
    )
    out = cv2.warpAffine(
        np.ascontiguousarray(patch),
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return out.astype(np.float32) * np.float32(1 / 255)


def largest(boxes: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` largest boxes, largest first."""
    if limit <= 0 or len(boxes) == 0:
        return np.zeros(0, np.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.argsort(-areas, kind="stable")[:limit]


def decode(
    points: np.ndarray,
    r: Roi,
    image_shape: tuple[int, int],
    min_score: float,
    size: int = INPUT_SIZE,
) -> list[Keypoint]:
    """``[33, 5]`` model keypoints of one crop -> the confident ones inside the image.

    A keypoint is kept when its visibility and presence (the model's probability
    that the point lies in the crop) are both at least ``min_score``.

    The model expects a whole upright body in the crop and places hips and legs
    in it even when there are none (a half-length portrait, people seated behind
    a table); it rates those hips visible (about 1.0) but the invented knees
    0.2-0.69, and now and then a heel above 0.7. So hips are kept only with a
    knee, and ankles, heels and toes only with the joint above them.
    """
    h, w = image_shape
    scale = r.side / size
    out = []
    for name, p in zip(KEYPOINT_NAMES, points, strict=True):
        score = float(min(p[VISIBILITY], p[PRESENCE]))
        x, y = r.x0 + float(p[X]) * scale, r.y0 + float(p[Y]) * scale
        if score >= min_score and 0 <= x < w and 0 <= y < h:
            out.append(Keypoint(name, x, y, score))
    kept = {k.name for k in out}
    for child, parent in LEG_PARENT.items():  # parents first: ankles before heels
        if parent not in kept:
            kept.discard(child)
    if not kept & set(KNEES):
        kept -= set(HIPS)
    return [k for k in out if k.name in kept]
