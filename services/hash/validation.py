"""Request checks of the hash service: names, ids, code sizes, frame counts."""

from __future__ import annotations

import re

import numpy as np

from services.common.errors import InvalidInput
from services.hash.config import SUPPORTED_BITS
from visionmesh.v1 import hash_pb2

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_ID_BYTES = 512


def collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidInput(
            f"collection name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return name


def item_id(value: str) -> str:
    if not value:
        raise InvalidInput("id is empty")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidInput(f"id is longer than {MAX_ID_BYTES} bytes")
    return value


def bits(value: int, default: int) -> int:
    chosen = value or default
    if chosen not in SUPPORTED_BITS:
        raise InvalidInput(
            f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))} (or 0 for the default), got {value}"
        )
    return chosen


def code(
    message: hash_pb2.HashCode, expected_bits: int | None = None, expected_method: str | None = None
) -> np.ndarray:
    """A HashCode message -> packed uint8 array, checked against its own bits and the collection's."""
    if message.bits not in SUPPORTED_BITS:
        raise InvalidInput(
            f"code.bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {message.bits}"
        )
    if len(message.code) * 8 != message.bits:
        raise InvalidInput(
            f"code has {len(message.code)} bytes but code.bits = {message.bits} needs {message.bits // 8}"
        )
    if expected_bits is not None and message.bits != expected_bits:
        raise InvalidInput(
            f"the collection holds {expected_bits}-bit codes, got a {message.bits}-bit code"
        )
    if expected_method is not None and message.method and message.method != expected_method:
        raise InvalidInput(
            f"the collection holds {expected_method} codes, got a {message.method} code (codes of different methods are not comparable)"
        )
    return np.frombuffer(message.code, np.uint8).copy()


def frame_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidInput("no image: give frames (one image, or a video's keyframes) or a code")
    if count > limit:
        raise InvalidInput(f"{count} frames is more than the limit of {limit} per item")
