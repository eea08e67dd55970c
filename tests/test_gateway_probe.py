"""The gateway's header-only validation agrees with the full validating decode; frame batching
bounds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from gateway.probe import probe
from services.common.errors import InvalidInput
from services.common.images import ImageLimits, decode
from tests.conftest import encode

LIMITS = ImageLimits()


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_dimensions_and_format_match_the_decode(orientation: int) -> None:
    data = _jpeg_with_orientation(skimage.data.chelsea(), orientation)
    probed, decoded = probe(data, LIMITS), decode(data, LIMITS)
    assert (probed.width, probed.height) == (decoded.width, decoded.height)
    assert (probed.format, probed.sha256) == (decoded.format, decoded.sha256)


def test_png_and_webp_headers() -> None:
    rgb = skimage.data.astronaut()[:100, :60]
    for fmt in ("PNG", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt)
        probed = probe(buf.getvalue(), LIMITS)
        assert (probed.width, probed.height, probed.format) == (60, 100, fmt)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"just text, not a picture\n" * 20, "not a recognised image"),
        (None, "decompression-bomb"),
    ],
)
def test_bad_headers_are_rejected_like_the_decode(data: bytes | None, needle: str) -> None:
    if data is None:
        buf = io.BytesIO()
        Image.new("1", (20000, 20000)).save(buf, "PNG", optimize=True)
        data = buf.getvalue()
    with pytest.raises(InvalidInput, match=needle):
        probe(data, LIMITS)
    with pytest.raises(InvalidInput, match=needle):
        decode(data, LIMITS)


def test_over_the_byte_limit() -> None:
    data = encode(skimage.data.chelsea())
    with pytest.raises(InvalidInput, match="byte limit"):
        probe(data, ImageLimits(max_bytes=len(data) - 1))


def test_frames_split_into_calls_within_the_byte_and_item_bounds() -> None:
    from gateway.fanout import _chunks
    from services.common.protos import rgb_to_image
    from visionmesh.v1 import classify_pb2

    frame = np.zeros((720, 1280, 3), np.uint8)
    requests = [classify_pb2.ClassifyRequest(image=rgb_to_image(frame)) for _ in range(5)]
    size = requests[0].ByteSize()
    chunks = _chunks(requests, max_bytes=2 * size, max_items=16)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [len(c) for c in _chunks(requests, max_bytes=100 * size, max_items=3)] == [3, 2]
    assert [r for c in chunks for r in c] == requests
