"""The documented range of every numeric option of every request message, checked at the edge.

``check_request`` walks a decoded request (and every sub-message it sets) and
raises ``InvalidInput`` naming the field, its range and the value for the
first option out of range, before any servicer sees the request. The server
layer runs it on every request of every server (see ``interceptors``), so a
service cannot forget a check. Services may narrow a range further from their
own settings (e.g. the OCR ``max_lines_cap``); they never widen it.

The same ranges are written in the proto comments and docs/reliability.md;
``tests/test_protocol.py`` checks that every numeric and enum field of every
request message has an entry here (or a reason in ``CHECKED_ELSEWHERE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import InvalidInput

PACKAGE = "visionmesh.v1"
HASH_BITS = (64, 128, 256)
# Largest value any option counting results may take (top_k, max_lines, max_faces, k).
MAX_RESULTS = 1000
# Longest image side in pixels anything may refer to (the image limits' max_side default).
MAX_SIDE_PX = 20_000
MAX_VIDEO_FRAMES = 64
MAX_UPLOAD_BYTES = 1 << 40


@dataclass(frozen=True)
class Range:
    """``low <= value <= high``; with ``zero_is_default`` a 0 (the service default) is accepted
    too."""

    low: float
    high: float
    zero_is_default: bool = False
    # False: ``value < high`` (a probability floor of 1 would keep nothing).
    high_inclusive: bool = True

    def describe(self) -> str:
        span = (
            f"{_num(self.low)}..{_num(self.high)}"
            if self.high_inclusive
            else f"in [{_num(self.low)}, {_num(self.high)})"
        )
        return f"0 (service default) or {span}" if self.zero_is_default else span

    def accepts(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        below_high = value <= self.high if self.high_inclusive else value < self.high
        return (self.zero_is_default and value == 0) or (self.low <= value and below_high)


@dataclass(frozen=True)
class OneOf:
    values: tuple[int, ...]
    zero_is_default: bool = False

    def describe(self) -> str:
        listed = ", ".join(map(str, self.values))
        return (
            f"0 (service default) or one of {listed}"
            if self.zero_is_default
            else f"one of {listed}"
        )

    def accepts(self, value: float) -> bool:
        return (self.zero_is_default and value == 0) or value in self.values


Rule = Range | OneOf


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_RESULTS = Range(1, MAX_RESULTS, zero_is_default=True)
_CONFIDENCE = Range(0.0, 1.0)
_FACE_SIDE = Range(10.0, float(MAX_SIDE_PX), zero_is_default=True)
_BITS_OR_DEFAULT = OneOf(HASH_BITS, zero_is_default=True)
_DISTANCE = Range(0, max(HASH_BITS))
_SCORE_FLOOR = Range(0.0, 1.0, zero_is_default=True, high_inclusive=False)
# Person detection's non-maximum suppression loop is bounded by this.
MAX_DETECTIONS = 300
_DETECTIONS = Range(1, MAX_DETECTIONS, zero_is_default=True)

# "<message>.<field>" (package omitted) -> the documented range.
RANGES: dict[str, Rule] = {
    "ClassifyRequest.top_k": _RESULTS,
    "ClassifyOptions.top_k": _RESULTS,
    "RecognizeRequest.max_lines": _RESULTS,
    "RecognizeRequest.min_confidence": _CONFIDENCE,
    "OcrOptions.max_lines": _RESULTS,
    "OcrOptions.min_confidence": _CONFIDENCE,
    "DetectRequest.max_faces": _RESULTS,
    "DetectRequest.min_face_size": _FACE_SIDE,
    "FaceOptions.max_faces": _RESULTS,
    "FaceOptions.min_face_size": _FACE_SIDE,
    "EncodeRequest.bits": _BITS_OR_DEFAULT,
    "HashOptions.bits": _BITS_OR_DEFAULT,
    "HashCode.bits": OneOf(HASH_BITS),
    "HashOptions.k": _RESULTS,
    "SearchRequest.k": _RESULTS,
    "HashOptions.max_distance": _DISTANCE,
    "SearchRequest.max_distance": _DISTANCE,
    "DetectObjectsRequest.min_score": _SCORE_FLOOR,
    "DetectOptions.min_score": _SCORE_FLOOR,
    "DetectObjectsRequest.max_detections": _DETECTIONS,
    "DetectOptions.max_detections": _DETECTIONS,
    "VideoUploadHeader.num_frames": Range(1, MAX_VIDEO_FRAMES, zero_is_default=True),
    "VideoUploadHeader.total_size": Range(0, MAX_UPLOAD_BYTES),
}

# Numeric fields of request messages whose limits are settings, checked where they apply.
CHECKED_ELSEWHERE: dict[str, str] = {
    "RawImage.width": "image limits (images.max_side, images.max_pixels) before any allocation",
    "RawImage.height": "image limits (images.max_side, images.max_pixels) before any allocation",
}


def check_request(message: Message) -> None:
    """Raise ``InvalidInput`` for the first option of ``message`` outside its documented range."""
    _check(message, "")


# Field types whose values are never range-checked: reading them from a parsed message
# copies them (raw pixels are megabytes), so the check does not touch them at all.
_UNCHECKED_TYPES = (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING)


def _set_fields(message: Message) -> list[tuple[FieldDescriptor, Any]]:
    """What ``ListFields`` gives, less the bytes and string fields (never read, never copied)."""
    found = []
    for field in message.DESCRIPTOR.fields:
        if field.type in _UNCHECKED_TYPES:
            continue
        if field.has_presence:
            if message.HasField(field.name):
                found.append((field, getattr(message, field.name)))
            continue
        value = getattr(message, field.name)
        # Like ListFields: empty repeated fields and proto3 scalars left at 0 are not set.
        if (len(value) if _repeated(field) else value) != 0:
            found.append((field, value))
    return found


def _check(message: Message, prefix: str) -> None:
    descriptor = message.DESCRIPTOR
    for field, value in _set_fields(message):
        where = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            children = value if _repeated(field) else [value]
            for i, child in enumerate(children):
                _check(child, f"{where}[{i}]." if _repeated(field) else f"{where}.")
            continue
        if field.type == FieldDescriptor.TYPE_ENUM:
            known = field.enum_type.values_by_number
            for item in value if _repeated(field) else [value]:
                if item not in known:
                    names = ", ".join(v.name for v in field.enum_type.values if v.number)
                    raise InvalidInput(
                        f"{where}: unknown {field.enum_type.name.lower()} value {item} "
                        f"(known: {names})"
                    )
            continue
        rule = RANGES.get(f"{descriptor.name}.{field.name}")
        if rule is None:
            continue
        for item in value if _repeated(field) else [value]:
            if not rule.accepts(item):
                raise InvalidInput(f"{where} must be {rule.describe()}, got {_num(item)}")
    # Proto3 scalars left at 0 are skipped: every rule but HashCode.bits takes
    # 0 as the default, and the hash service rejects a code whose bits are 0.


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)
