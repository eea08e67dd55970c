"""Tags the face service adds to the gateway's merged list (source "face")."""

from __future__ import annotations

from collections.abc import Sequence

from services.face.config import TagConfig
from visionmesh.v1 import common_pb2, face_pb2

SOURCE = "face"


def _tag(
    name: str, score: float, en: str, zh: str, face: face_pb2.Face | None = None
) -> common_pb2.Tag:
    tag = common_pb2.Tag(
        name=name, score=float(score), source=SOURCE, display_name_en=en, display_name_zh=zh
    )
    if face is not None:
        tag.box.CopyFrom(face.box)
    return tag


def face_tags(faces: Sequence[face_pb2.Face], config: TagConfig) -> list[common_pb2.Tag]:
    """``face/count`` (score: best detection), then ``face/female``, ``face/male``, ``face/smiling``
    (score and box: the face that shows it most)."""
    if not faces:
        return []
    n = len(faces)
    best = max(faces, key=lambda f: f.score)
    tags = [_tag("face/count", best.score, f"{n} face" + ("s" if n > 1 else ""), f"{n} 张人脸")]
    for label, en, zh in (("female", "Woman", "女性"), ("male", "Man", "男性")):
        matching = [
            f for f in faces if f.gender.label == label and f.gender.confidence >= config.gender_min
        ]
        if matching:
            top = max(matching, key=lambda f: f.gender.confidence)
            tags.append(_tag(f"face/{label}", top.gender.confidence, en, zh, top))
    happiest = max(faces, key=lambda f: f.emotion.scores.get("happy", 0.0))
    happy = happiest.emotion.scores.get("happy", 0.0)
    if happy >= config.smiling_min:
        tags.append(_tag("face/smiling", happy, "Smiling", "微笑", happiest))
    return tags
