"""Header-only validation of an encoded image: what the gateway needs without decoding the pixels.

When the image can travel to the services as it came (small enough, no resize),
the gateway checks the byte limit, the format and the dimensions (the
decompression-bomb guard) from the header, and the services' own validating
decode (``services/common/images.py``) checks the rest where the pixels are
needed, so an image is decoded once per service instead of once more in the
gateway. Messages match ``images.decode``'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.common.errors import InvalidInput
from services.common.images import ImageLimits, _check_dims, open_header

# EXIF orientations that turn the image a quarter: width and height swap on decode.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ProbedImage:
    width: int
    height: int
    format: str
    sha256: str


def probe(data: bytes, limits: ImageLimits) -> ProbedImage:
    """Format and oriented dimensions from the header, or ``InvalidInput`` saying what is wrong."""
    img = open_header(data, limits)
    fmt = img.format or "UNKNOWN"
    width, height = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1) if fmt != "GIF" else 1
    except Exception as exc:
        raise InvalidInput(f"image header could not be read: {exc}") from None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    _check_dims(width, height, limits)
    return ProbedImage(width, height, fmt, hashlib.sha256(data).hexdigest())
