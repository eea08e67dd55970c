"""Conversions between the wire types of common.proto and numpy."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np

from services.common.config import ImageLimitsConfig
from services.common.errors import InvalidInput
from services.common.images import DecodedImage, ImageLimits, decode, from_raw
from visionmesh.v1 import common_pb2


def image_limits(config: ImageLimitsConfig) -> ImageLimits:
    return ImageLimits(
        max_bytes=config.max_bytes, max_pixels=config.max_pixels, max_side=config.max_side
    )


async def decode_image(
    image: common_pb2.Image, limits: ImageLimits, digest_raw: bool = False
) -> DecodedImage:
    """Validate and decode an ``Image`` message (encoded or raw) within ``limits``.

    The one decode path of the gateway and every service: encoded bytes are
    decoded in a worker thread, never on the event loop; raw pixels are checked
    and viewed in place (their SHA-256, which only the gateway's cache needs,
    is computed in a thread when ``digest_raw``).
    """
    source = image.WhichOneof("source")
    if source == "encoded":
        return await asyncio.to_thread(decode, image.encoded, limits)
    if source == "raw":
        raw = image.raw
        data = raw.rgb
        rgb = from_raw(raw.width, raw.height, data, limits)
        digest = await asyncio.to_thread(_sha256, data) if digest_raw else ""
        return DecodedImage(rgb, "RAW", digest)
    raise InvalidInput("request has no image (set image.encoded or image.raw)")


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
