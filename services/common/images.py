"""Validate and decode images once: size limits, bomb guard, EXIF, 8-bit RGB.

Every input — palette, alpha, grey, 16-bit, CMYK, animated — leaves as an
``H x W x 3`` uint8 RGB array with EXIF orientation applied. Anything that is
not a decodable image raises ``InvalidInput`` naming the problem.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.config import ImageLimitsConfig
from services.common.errors import InvalidInput

# Our own pixel limit is checked before decoding; PIL's warning-level guard is
# turned into an error so nothing slips between the two.
warnings.simplefilter("error", Image.DecompressionBombWarning)

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 20_000
    min_side: int = 1
    # Decoded pixels of one request, every frame together (see ``PixelBudget``).
    max_request_pixels: int = 64_000_000

    @classmethod
    def from_config(cls, config: ImageLimitsConfig) -> ImageLimits:
        return cls(
            max_bytes=config.max_bytes,
            max_pixels=config.max_pixels,
            max_side=config.max_side,
            max_request_pixels=config.max_request_pixels,
        )

    def budget(self) -> PixelBudget:
        return PixelBudget(self.max_request_pixels)


class PixelBudget:
    """The decoded pixels one request may still allocate (frames x width x height).

    Each image's dimensions are charged from its header (or its raw message
    fields) before its pixels are allocated, so a request of many frames, each
    within the per-image limit, cannot add up past the budget either.
    """

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.used = 0

    def charge(self, width: int, height: int) -> None:
        pixels = width * height
        if self.used + pixels > self.max_pixels:
            raise InvalidInput(
                f"request decodes to {self.used + pixels} pixels (this image {width}x{height}): "
                f"over the per-request budget of {self.max_pixels} pixels "
                "(images.max_request_pixels)"
            )
        self.used += pixels


@dataclass
class DecodedImage:
    rgb: np.ndarray
    format: str
    sha256: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _check_dims(width: int, height: int, limits: ImageLimits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise InvalidInput(
            f"image is {width}x{height}: smaller than {limits.min_side} pixel(s) on a side"
        )
    if width > limits.max_side or height > limits.max_side:
        raise InvalidInput(
            f"image is {width}x{height}: a side exceeds the {limits.max_side}-pixel limit"
        )
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height} pixels: over the "
            f"{limits.max_pixels}-pixel limit "
            "(decompression-bomb guard)"
        )


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header without decoding pixels; None if
    unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:  # decode() reports why, with the limits applied
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        grey = (
            np.zeros(arr.shape, np.uint8)
            if hi <= lo
            else ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        )
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        # Transparent pixels become white, as most viewers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_header(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open encoded bytes lazily (header only) within the byte limit and the accepted formats."""
    if not data:
        raise InvalidInput("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"image is {len(data)} bytes: over the {limits.max_bytes}-byte limit")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidInput(
            "bytes are not a recognised image format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image rejected by the decompression-bomb guard: {exc}") from None
    except Exception as exc:
        raise InvalidInput(f"image header could not be read: {exc}") from None
    fmt = img.format or "UNKNOWN"
    if fmt not in ALLOWED_FORMATS:
        raise InvalidInput(f"image format {fmt} is not accepted (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    return img


def decode(
    data: bytes, limits: ImageLimits = ImageLimits(), budget: PixelBudget | None = None
) -> DecodedImage:
    """Decode encoded image bytes into RGB, or raise ``InvalidInput`` saying why.

    The header's dimensions are checked against ``limits`` and charged to
    ``budget`` (a fresh one of ``limits`` when None) before pixels are decoded.
    """
    img = open_header(data, limits)
    fmt = img.format or "UNKNOWN"
    _check_dims(img.width, img.height, limits)
    (budget or limits.budget()).charge(img.width, img.height)
    try:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = np.asarray(_to_rgb(img), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image rejected by the decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"{fmt} image is corrupt or truncated: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInput(f"{fmt} image decoded to an unexpected shape {rgb.shape}")
    return DecodedImage(np.ascontiguousarray(rgb), fmt, hashlib.sha256(data).hexdigest())


def from_raw(
    width: int,
    height: int,
    rgb: bytes,
    limits: ImageLimits = ImageLimits(),
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """Raw interleaved RGB8 bytes -> ``H x W x 3`` array, with the same limits."""
    _check_dims(width, height, limits)
    expected = width * height * 3
    if len(rgb) != expected:
        raise InvalidInput(
            f"raw image {width}x{height} needs {expected} RGB bytes (width x height x "
            f"3), got {len(rgb)}"
        )
    (budget or limits.budget()).charge(width, height)
    return np.frombuffer(rgb, dtype=np.uint8).reshape(height, width, 3)


def fit_within(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the long side is at most ``max_side``; returns (image, scale applied)."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized), scale
