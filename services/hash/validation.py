"""Request checks of the hash service: names, ids, methods, code sizes, frame counts.

Every field that reaches the store is checked here first (the store checks the
same rules again, so one record that slipped past fails alone, never the
committer). Each message names the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from services.common.errors import InvalidInput, Overloaded
from services.hash.config import SUPPORTED_BITS
from visionmesh.v1 import hash_pb2

# fullmatch, not match with "$": "$" also matches before a final newline ("pbf\n").
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
METHOD = re.compile(r"[a-z0-9_-]{1,32}")
MAX_ID_BYTES = 512
# A collection's exact-copy tier is kept as a collection of its own, named after it with this
# suffix: "#" is not allowed in the names callers give, so the two never collide.
TIER_SUFFIX = "#pdq"
EXACT_BITS, EXACT_METHOD = 256, "pdq"


def collection_name(name: str) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise InvalidInput(
            f"collection name {name!r:.140} must be 1-128 characters of letters, "
            "digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return name


def tier_collection(name: str) -> str:
    """The store's name of collection ``name``'s exact-copy tier."""
    return name + TIER_SUFFIX


def stored_collection_name(name: str) -> str:
    """A name the store may hold: a caller's collection, or the exact-copy tier of one."""
    return collection_name(name.removesuffix(TIER_SUFFIX) if isinstance(name, str) else name)


def user_collection_count(names: Iterable[str]) -> int:
    """Collections callers made (their exact-copy tiers do not count against the limit)."""
    return sum(1 for name in names if not name.endswith(TIER_SUFFIX))


def collection_limit(names: Iterable[str], new: str, limit: int) -> None:
    """Refuse a new caller collection past ``limit`` (exact-copy tiers ride on theirs)."""
    held = user_collection_count(names)
    if held >= limit and not new.endswith(TIER_SUFFIX):
        raise Overloaded(
            f"collection limit reached: this service holds {held} collections "
            "(limits.max_collections); delete one or raise the limit"
        )


def item_id(value: str, max_bytes: int = MAX_ID_BYTES) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("id is empty")
    if len(value.encode("utf-8")) > max_bytes:
        raise InvalidInput(f"id is longer than {max_bytes} bytes")
    return value


def method(value: str) -> str:
    if not isinstance(value, str) or not METHOD.fullmatch(value):
        raise InvalidInput(
            f"code.method {value!r:.60} must be 1-32 characters of a-z, 0-9, '_', '-' "
            "(e.g. itq or lsh)"
        )
    return value


def code_bytes(code: bytes, bits_value: int) -> bytes:
    """A packed code's length against its bit count (the store's own check of a record)."""
    if bits_value not in SUPPORTED_BITS:
        raise InvalidInput(
            f"code.bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits_value}"
        )
    if not isinstance(code, bytes) or len(code) * 8 != bits_value:
        raise InvalidInput(
            f"code has {len(code)} bytes but code.bits = {bits_value} needs {bits_value // 8}"
        )
    return code


def bits(value: int, default: int) -> int:
    chosen = value or default
    if chosen not in SUPPORTED_BITS:
        raise InvalidInput(
            f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))} (or 0 for the "
            f"default), got {value}"
        )
    return chosen


def code(
    message: hash_pb2.HashCode, expected_bits: int | None = None, expected_method: str | None = None
) -> np.ndarray:
    """A HashCode message -> packed uint8 array, checked against its own bits and the
    collection's."""
    code_bytes(message.code, message.bits)
    if message.method:
        method(message.method)
    if expected_bits is not None and message.bits != expected_bits:
        raise InvalidInput(
            f"the collection holds {expected_bits}-bit codes, got a {message.bits}-bit code"
        )
    if expected_method is not None and message.method and message.method != expected_method:
        raise InvalidInput(
            f"the collection holds {expected_method} codes, got a {message.method} "
            "code (codes of different methods are not comparable)"
        )
    return np.frombuffer(message.code, np.uint8).copy()


def exact_code(message: hash_pb2.HashCode) -> np.ndarray:
    """An exact-tier (PDQ) code from a request, as Encode returned it."""
    if message.method and message.method != EXACT_METHOD:
        raise InvalidInput(
            f"exact_code.method must be {EXACT_METHOD!r} (or empty), got {message.method!r:.60}"
        )
    if message.bits != EXACT_BITS or len(message.code) * 8 != EXACT_BITS:
        raise InvalidInput(
            f"exact_code must be a {EXACT_BITS}-bit PDQ code ({EXACT_BITS // 8} bytes, bits = "
            f"{EXACT_BITS}), got {len(message.code)} bytes, bits = {message.bits}"
        )
    return np.frombuffer(message.code, np.uint8).copy()


def frame_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidInput("no image: give frames (one image, or a video's keyframes) or a code")
    if count > limit:
        raise InvalidInput(f"{count} frames is more than the limit of {limit} per item")
