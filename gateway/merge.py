"""Merging service answers: coordinates back to the client's pixels, one ranked tag list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def _inside(face: common_pb2.Box, person: common_pb2.Box) -> float:
    """Share of the face box inside the person box."""
    w = min(face.x_max, person.x_max) - max(face.x_min, person.x_min)
    h = min(face.y_max, person.y_max) - max(face.y_min, person.y_min)
    area = (face.x_max - face.x_min) * (face.y_max - face.y_min)
    return max(w, 0.0) * max(h, 0.0) / area if area > 0 else 0.0


def link_people(response: gateway_pb2.AnalyzeResponse, min_inside: float = 0.8) -> None:
    """Give each detected person the attributes of its face, when the face feature found one.

    A face belongs to a person when at least ``min_inside`` of the face box lies in the
    person box, its centre is in the box's upper half (the head) and it is at most as
    wide as the person. Pairs are taken best first (most of the face inside, then the
    face widest relative to the person), each face and each person used once.
    """
    if not (response.HasField("face") and response.HasField("detect")):
        return
    faces = response.face.faces
    people = [d for d in response.detect.detections if d.label == "person"]
    pairs = []
    for fi, face in enumerate(faces):
        fb = face.box
        cx, cy = (fb.x_min + fb.x_max) / 2, (fb.y_min + fb.y_max) / 2
        for pi, person in enumerate(people):
            pb = person.box
            inside = _inside(fb, pb)
            width = pb.x_max - pb.x_min
            head = pb.x_min <= cx <= pb.x_max and pb.y_min <= cy <= (pb.y_min + pb.y_max) / 2
            if inside >= min_inside and head and 0 < fb.x_max - fb.x_min <= width:
                pairs.append((inside, (fb.x_max - fb.x_min) / width, fi, pi))
    used_faces: set[int] = set()
    used_people: set[int] = set()
    for _, _, fi, pi in sorted(pairs, reverse=True):
        if fi in used_faces or pi in used_people:
            continue
        used_faces.add(fi)
        used_people.add(pi)
        face = faces[fi]
        people[pi].face.face_index = fi
        people[pi].face.age.CopyFrom(face.age)
        people[pi].face.gender.CopyFrom(face.gender)
        people[pi].face.emotion.CopyFrom(face.emotion)


def above_floors(
    tags: Iterable[common_pb2.Tag], floors: Mapping[str, float]
) -> list[common_pb2.Tag]:
    """Tags at or above their source's floor (a source without one keeps every tag)."""
    return [t for t in tags if t.score >= floors.get(t.source, 0.0)]


def ranked(tags: Iterable[common_pb2.Tag]) -> list[common_pb2.Tag]:
    """Highest score first; ties keep a stable, name-sorted order."""
    return sorted(tags, key=lambda t: (-t.score, t.name))
