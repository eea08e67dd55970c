"""Conversions between the wire types of common.proto and numpy."""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidInput
from services.common.images import ImageLimits, decode, from_raw
from visionmesh.v1 import common_pb2

DEFAULT_LIMITS = ImageLimits()


def image_to_rgb(image: common_pb2.Image, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An ``Image`` message (encoded or raw) -> ``H x W x 3`` uint8 RGB."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode(image.encoded, limits).rgb
    if source == "raw":
        return from_raw(image.raw.width, image.raw.height, image.raw.rgb, limits)
    raise InvalidInput("request has no image (set image.encoded or image.raw)")


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
