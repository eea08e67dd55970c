"""Conversions between the wire types of common.proto and numpy."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import numpy as np

from services.common.errors import InvalidInput
from services.common.images import (
    DecodedImage,
    ImageLimits,
    PixelBudget,
    decode,
    from_raw,
    header_size,
)
from visionmesh.v1 import common_pb2

DEFAULT_LIMITS = ImageLimits()


def image_to_rgb(
    image: common_pb2.Image,
    limits: ImageLimits = DEFAULT_LIMITS,
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """An ``Image`` message (encoded or raw) -> ``H x W x 3`` uint8 RGB, within ``limits``."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode(image.encoded, limits, budget).rgb
    if source == "raw":
        return from_raw(image.raw.width, image.raw.height, image.raw.rgb, limits, budget)
    raise InvalidInput("request has no image (set image.encoded or image.raw)")


def _stated_pixels(image: common_pb2.Image) -> int:
    source = image.WhichOneof("source")
    if source == "raw":
        return max(0, image.raw.width) * max(0, image.raw.height)
    if source == "encoded":
        size = header_size(image.encoded)
        return size[0] * size[1] if size else 0
    return 0


def frames_to_rgb(
    frames: Sequence[common_pb2.Image], limits: ImageLimits = DEFAULT_LIMITS
) -> list[np.ndarray]:
    """Every frame of one request, decoded within one per-request pixel budget.

    The pixels every frame states (raw message fields, encoded headers) are
    added up before any frame is decoded, so a request over the budget
    allocates nothing; decoding then charges the same budget as a backstop.
    """
    stated = sum(_stated_pixels(f) for f in frames)
    if stated > limits.max_request_pixels:
        raise InvalidInput(
            f"request's {len(frames)} frame(s) decode to {stated} pixels: over the per-request "
            f"budget of {limits.max_request_pixels} pixels (images.max_request_pixels)"
        )
    budget = limits.budget()
    return [image_to_rgb(f, limits, budget) for f in frames]


async def decode_image(
    image: common_pb2.Image,
    limits: ImageLimits,
    digest_raw: bool = False,
    budget: PixelBudget | None = None,
) -> DecodedImage:
    """Validate and decode an ``Image`` message (encoded or raw) within ``limits``.

    The one decode path of the gateway and every service: encoded bytes are
    decoded in a worker thread, never on the event loop; raw pixels are checked
    and viewed in place (their SHA-256, which only the gateway's cache needs,
    is computed in a thread when ``digest_raw``).
    """
    source = image.WhichOneof("source")
    if source == "encoded":
        return await asyncio.to_thread(decode, image.encoded, limits, budget)
    if source == "raw":
        raw = image.raw
        data = raw.rgb
        rgb = from_raw(raw.width, raw.height, data, limits, budget)
        digest = await asyncio.to_thread(_sha256, data) if digest_raw else ""
        return DecodedImage(rgb, "RAW", digest)
    raise InvalidInput("request has no image (set image.encoded or image.raw)")


async def decode_frames(
    frames: Sequence[common_pb2.Image], limits: ImageLimits
) -> list[np.ndarray]:
    """Every frame of one request within one pixel budget (``frames_to_rgb``), off the event
    loop."""
    return await asyncio.to_thread(frames_to_rgb, frames, limits)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rgb_to_image(rgb: np.ndarray) -> common_pb2.Image:
    h, w = rgb.shape[:2]
    return common_pb2.Image(
        raw=common_pb2.RawImage(
            width=w, height=h, rgb=np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
        )
    )


def box(x_min: float, y_min: float, x_max: float, y_max: float) -> common_pb2.Box:
    return common_pb2.Box(
        x_min=float(x_min), y_min=float(y_min), x_max=float(x_max), y_max=float(y_max)
    )
