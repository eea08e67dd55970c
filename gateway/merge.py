"""Merging service answers: coordinates back to the client's pixels, one ranked tag list."""

from __future__ import annotations

from collections.abc import Iterable

from visionmesh.v1 import common_pb2, gateway_pb2

FEATURE_NAMES = {
    common_pb2.FEATURE_CLASSIFY: "classify",
    common_pb2.FEATURE_OCR: "ocr",
    common_pb2.FEATURE_FACE: "face",
    common_pb2.FEATURE_HASH: "hash",
}
FEATURES_BY_NAME = {v: k for k, v in FEATURE_NAMES.items()}


def _scale_box(box: common_pb2.Box, factor: float) -> None:
    box.x_min *= factor
    box.y_min *= factor
    box.x_max *= factor
    box.y_max *= factor


def _scale_points(points: Iterable[common_pb2.Point], factor: float) -> None:
    for p in points:
        p.x *= factor
        p.y *= factor


def rescale(response: gateway_pb2.AnalyzeResponse, factor: float) -> None:
    """Multiply every coordinate by ``factor`` (service pixels -> client pixels), in place."""
    if factor == 1.0:
        return
    if response.HasField("classify") and response.classify.safety.HasField("region"):
        _scale_box(response.classify.safety.region, factor)
    for line in response.ocr.lines:
        _scale_points(line.polygon.points, factor)
    for face in response.face.faces:
        _scale_box(face.box, factor)
        _scale_points(face.landmarks, factor)
    for tag in response.tags:
        if tag.HasField("box"):
            _scale_box(tag.box, factor)


def text_tags(ocr: gateway_pb2.RecognizeResponse) -> list[common_pb2.Tag]:  # type: ignore[name-defined]
    """A ``text/present`` tag when OCR found lines (score: the best line's confidence)."""
    if not ocr.lines:
        return []
    best = max(line.confidence for line in ocr.lines)
    return [
        common_pb2.Tag(
            name="text/present",
            score=best,
            source="ocr",
            display_name_en="contains text",
            display_name_zh="含文字",
        )
    ]


def ranked(tags: Iterable[common_pb2.Tag]) -> list[common_pb2.Tag]:
    """Highest score first; ties keep a stable, name-sorted order."""
    return sorted(tags, key=lambda t: (-t.score, t.name))
