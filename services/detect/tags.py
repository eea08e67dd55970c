"""People tags from detections (source "detect")."""

from __future__ import annotations

import numpy as np

from services.common.protos import box
from services.detect.config import TagConfig
from visionmesh.v1 import common_pb2

SOURCE = "detect"
PERSON = "person"
# Tag name -> English, Chinese display names.
PEOPLE_TAGS = {
    "people/none": ("No people", "无人"),
    "people/single": ("One person", "单人"),
    "people/pair": ("Two people", "两人"),
    "people/group": ("Group of people", "多人"),
    "people/crowd": ("Crowd", "人群"),
    "people/close-up": ("Close-up of a person", "人物特写"),
}


def _tag(name: str, score: float) -> common_pb2.Tag:
    en, zh = PEOPLE_TAGS[name]
    return common_pb2.Tag(
        name=name, score=float(score), source=SOURCE, display_name_en=en, display_name_zh=zh
    )


def coverage(boxes: np.ndarray, height: int, width: int) -> float:
    """Share of the frame covered by the union of ``boxes`` (pixels, x1 y1 x2 y2)."""
    if len(boxes) == 0:
        return 0.0
    # A coarse occupancy grid is exact enough for a share and bounded in cost.
    grid = 64
    mask = np.zeros((grid, grid), bool)
    sx, sy = grid / width, grid / height
    for x1, y1, x2, y2 in boxes:
        mask[int(y1 * sy) : int(np.ceil(y2 * sy)), int(x1 * sx) : int(np.ceil(x2 * sx))] = True
    return float(mask.mean())


def count_tag(people: int, dense: bool, config: TagConfig) -> str:
    if people == 0:
        return "people/none"
    if people >= config.crowd_min or dense:
        return "people/crowd"
    return {1: "people/single", 2: "people/pair"}.get(people, "people/group")


def people_tags(
    boxes: np.ndarray,
    scores: np.ndarray,
    best_score: float,
    shape: tuple[int, int],
    config: TagConfig,
) -> list[common_pb2.Tag]:
    """One count tag (none / single / pair / group / crowd), plus close-up when it applies.

    Scores: "none" is 1 minus the best person score anywhere; a count tag is the
    mean score of the people counted; close-up is the largest person's score.
    """
    h, w = shape
    n = len(boxes)
    if n == 0:
        return [_tag("people/none", 1.0 - best_score)]
    dense = n >= config.dense_min and coverage(boxes, h, w) >= config.dense_coverage
    tags = [_tag(count_tag(n, dense, config), float(np.mean(scores)))]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(h * w)
    largest = int(np.argmax(areas))
    if areas[largest] >= config.close_up_share:
        tag = _tag("people/close-up", float(scores[largest]))
        tag.box.CopyFrom(box(*boxes[largest]))
        tags.append(tag)
    return tags
