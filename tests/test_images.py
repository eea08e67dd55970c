"""Input validation: every accepted format becomes 8-bit RGB; everything else is refused clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidInput
from services.common.images import ImageLimits, decode, fit_within, from_raw
from tests.support import encode


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[:128, :96]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_decode_to_rgb(photo: np.ndarray, fmt: str) -> None:
    out = decode(encode(photo, fmt))
    assert out.rgb.shape == (128, 96, 3) and out.rgb.dtype == np.uint8
    assert out.format == fmt
    assert len(out.sha256) == 64


def _save(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_palette_alpha_grey_16bit_cmyk(photo: np.ndarray) -> None:
    base = Image.fromarray(photo)
    cases = {
        "P": _save(base.convert("P")),
        "RGBA": _save(base.convert("RGBA")),
        "LA": _save(base.convert("LA")),
        "L": _save(base.convert("L")),
        "I;16": _save(
            Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16))
        ),
        "CMYK": _save(base.convert("CMYK"), "JPEG"),
    }
    for mode, data in cases.items():
        rgb = decode(data).rgb
        assert rgb.shape == (128, 96, 3), mode
        assert rgb.dtype == np.uint8, mode
        assert 20 < rgb.mean() < 235, f"{mode} decoded to a degenerate image"


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert (decode(_save(img)).rgb == 255).all()


def test_exif_orientation_is_honoured(photo: np.ndarray) -> None:
    img = Image.fromarray(photo)  # 96 wide, 128 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _save(img, "JPEG", exif=exif)
    assert decode(data).rgb.shape == (96, 128, 3)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"hello, this is a text file\n" * 10, "not a recognised image"),
        (
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "not a recognised image",
        ),
    ],
)
def test_garbage_is_refused(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        decode(data)


def test_truncated_jpeg_is_refused(photo: np.ndarray) -> None:
    data = encode(photo)
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        decode(data[: len(data) // 2])


def test_pixel_bomb_is_refused_before_decoding() -> None:
    # 20000 x 20000 = 400 MP declared in a tiny PNG.
    bomb = _save(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(InvalidInput, match="decompression-bomb guard"):
        decode(bomb)


def test_byte_limit() -> None:
    with pytest.raises(InvalidInput, match="byte limit"):
        decode(b"\xff" * 101, ImageLimits(max_bytes=100))


def test_raw_pixels_are_checked() -> None:
    assert from_raw(2, 3, bytes(18)).shape == (3, 2, 3)
    with pytest.raises(InvalidInput, match="needs 18 RGB bytes"):
        from_raw(2, 3, bytes(17))
    with pytest.raises(InvalidInput, match="smaller than"):
        from_raw(0, 3, b"")


def test_fit_within_scales_the_long_side() -> None:
    img = np.zeros((1000, 3000, 3), np.uint8)
    small, scale = fit_within(img, 1500)
    assert small.shape == (500, 1500, 3)
    assert scale == pytest.approx(0.5)
    same, one = fit_within(img, 4000)
    assert same is img and one == 1.0
