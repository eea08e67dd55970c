"""Text detection around the PP-OCR DB model: resize in, DB post-processing out.

Geometry uses OpenCV (contours, min-area rectangles), shapely (polygon area
and perimeter) and pyclipper (the polygon offset that "unclips" the shrunk
text kernels DB predicts), as PaddleOCR does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

from services.ocr.config import DetectionConfig

MULTIPLE = 32


@dataclass(frozen=True)
class DetInput:
    tensor: np.ndarray  # 1 x 3 x H x W float32, H and W multiples of 32
    scale_x: float  # model pixels -> image pixels
    scale_y: float


@dataclass(frozen=True)
class TextBox:
    quad: np.ndarray  # 4 x 2 float32, clockwise from top-left, image pixels
    score: float


def detection_size(height: int, width: int, cfg: DetectionConfig) -> tuple[int, int]:
    """Model input (h, w): short side up to ``min_side``, long side capped at ``max_side``,
    multiples of 32."""
    ratio = max(1.0, cfg.min_side / min(height, width))
    ratio = min(ratio, cfg.max_side / max(height, width))
    # Rounding to a multiple of 32 must not push a side past the cap.
    cap = max(MULTIPLE, cfg.max_side // MULTIPLE * MULTIPLE)
    h = min(cap, max(MULTIPLE, int(round(height * ratio / MULTIPLE)) * MULTIPLE))
    w = min(cap, max(MULTIPLE, int(round(width * ratio / MULTIPLE)) * MULTIPLE))
    return h, w


def normalise(bgr: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> 3 x H x W float32 in [-1, 1] (PaddleOCR's (x/255 - 0.5) / 0.5)."""
    x = bgr.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare(bgr: np.ndarray, cfg: DetectionConfig) -> DetInput:
    height, width = bgr.shape[:2]
    h, w = detection_size(height, width, cfg)
    resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    return DetInput(normalise(resized)[None], width / w, height / h)


def _mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Min-area rectangle of ``contour`` as 4 points (tl, tr, br, bl) and its short side."""
    rect = cv2.minAreaRect(contour)
    return order_clockwise(cv2.boxPoints(rect)), float(min(rect[1]))


def order_clockwise(points: np.ndarray) -> np.ndarray:
    """4 points -> top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(points, np.float32).reshape(4, 2)
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def _box_score(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean text probability inside ``quad`` (DB's "fast" score)."""
    h, w = prob.shape
    x0, y0 = np.clip(np.floor(quad.min(axis=0)).astype(int), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(quad.max(axis=0)).astype(int), 0, [w - 1, h - 1])
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(quad - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _unclip(quad: np.ndarray, ratio: float) -> np.ndarray | None:
    """Grow the shrunk kernel back to the text's extent (offset = area * ratio / perimeter)."""
    poly = Polygon(quad)
    if poly.length == 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(
        [tuple(p) for p in quad.astype(np.int64).tolist()],
        pyclipper.JT_ROUND,
        pyclipper.ET_CLOSEDPOLYGON,
    )
    grown = offset.Execute(poly.area * ratio / poly.length)
    if len(grown) != 1:
        return None
    return np.asarray(grown[0], np.float32).reshape(-1, 1, 2)


def boxes_from_probability(
    prob: np.ndarray, det: DetInput, image_hw: tuple[int, int], cfg: DetectionConfig
) -> list[TextBox]:
    """DB post-processing of one ``H x W`` probability map -> text boxes in image pixels."""
    # A 2x2 dilation joins characters split by thin gaps (PaddleOCR's use_dilation).
    bitmap = cv2.dilate((prob > cfg.threshold).astype(np.uint8) * 255, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) > cfg.max_candidates:
        # Bound the work on images with thousands of specks: keep the largest regions.
        contours = sorted(contours, key=cv2.contourArea, reverse=True)[: cfg.max_candidates]
    img_h, img_w = image_hw
    boxes: list[TextBox] = []
    for contour in contours:
        quad, short = _mini_box(contour)
        if short < cfg.min_box_side:
            continue
        score = _box_score(prob, quad)
        if score < cfg.box_threshold:
            continue
        grown = _unclip(quad, cfg.unclip_ratio)
        if grown is None:
            continue
        quad, short = _mini_box(grown)
        if short < cfg.min_box_side + 2:
            continue
        quad[:, 0] = np.clip(np.round(quad[:, 0] * det.scale_x), 0, img_w - 1)
        quad[:, 1] = np.clip(np.round(quad[:, 1] * det.scale_y), 0, img_h - 1)
        quad = order_clockwise(quad)
        if np.linalg.norm(quad[0] - quad[1]) <= 3 or np.linalg.norm(quad[0] - quad[3]) <= 3:
            continue
        boxes.append(TextBox(quad, score))
    if len(boxes) > cfg.max_boxes:
        boxes = sorted(boxes, key=lambda b: b.score, reverse=True)[: cfg.max_boxes]
    return boxes


def row_ids(boxes: list[TextBox]) -> list[int]:
    """The text row of each box, rows numbered top to bottom.

    Boxes whose top edges are within half a line height of the previous box
    belong to the same row, which tolerates small rotations and baselines
    that differ by a few pixels.
    """
    if not boxes:
        return []
    tops = np.array([b.quad[:, 1].min() for b in boxes])
    heights = np.array([max(1.0, float(b.quad[:, 1].max() - b.quad[:, 1].min())) for b in boxes])
    order = np.argsort(tops, kind="stable")
    line_ids = [0] * len(boxes)
    line, line_top, line_height = 0, tops[order[0]], heights[order[0]]
    for i in order[1:]:
        if tops[i] - line_top > 0.5 * min(line_height, heights[i]):
            line, line_top, line_height = line + 1, tops[i], heights[i]
        line_ids[i] = line
    return line_ids


def reading_order(boxes: list[TextBox]) -> list[TextBox]:
    """Top-to-bottom rows (``row_ids``), left-to-right within a row."""
    if not boxes:
        return []
    lefts = np.array([b.quad[:, 0].min() for b in boxes])
    return [boxes[i] for i in np.lexsort((lefts, np.array(row_ids(boxes))))]
