"""Merging service answers: coordinates back to the client's pixels, one ranked tag list."""

from __future__ import annotations

from collections.abc import Iterable

from visionmesh import features
from visionmesh.v1 import common_pb2, gateway_pb2


def rescale(response: gateway_pb2.AnalyzeResponse, factor: float) -> None:
    """Multiply every coordinate by ``factor`` (service pixels -> client pixels), in place."""
    if factor == 1.0:
        return
    for spec in features.all_features():
        if spec.rescale is not None and response.HasField(spec.result_field):  # type: ignore[arg-type]
            spec.rescale(getattr(response, spec.result_field), factor)
    for tag in response.tags:
        if tag.HasField("box"):
            features.scale_box(tag.box, factor)


def ranked(tags: Iterable[common_pb2.Tag]) -> list[common_pb2.Tag]:
    """Highest score first; ties keep a stable, name-sorted order."""
    return sorted(tags, key=lambda t: (-t.score, t.name))
