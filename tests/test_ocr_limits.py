"""OCR on bad and extreme input: bounded time and memory, clear limits, clear errors."""

from __future__ import annotations

import io
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from services.common.protos import rgb_to_image
from services.ocr.config import DetectionConfig, LimitsConfig
from services.ocr.detection import TextBox, detection_size, reading_order
from services.ocr.line_filter import keep_line, text_weight
from services.ocr.main import DEFINITION
from services.ocr.recognition import CtcDecoder, width_bucket
from tests.support import draw_lines, ensure_ocr_models, running_service
from tools.ocr_render import FONT_DIR, SC_FACE, hanzi_pool
from visionmesh.v1 import common_pb2, ocr_pb2, ocr_pb2_grpc

MAX_BOXES = 150


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[ocr_pb2_grpc.OcrServiceStub]:
    ensure_ocr_models()
    # The tiny-word page counts how many boxes get through the cap; the
    # short-line rule (tests/test_ocr_service.py) would drop most 1-2
    # character words there and hide that count, so it is off here.
    overrides = {"detection": {"max_boxes": MAX_BOXES}, "limits": {"short_line_weight": 0}}
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield ocr_pb2_grpc.OcrServiceStub(channel)


async def recognize(
    stub: ocr_pb2_grpc.OcrServiceStub, rgb: np.ndarray, **kwargs: Any
) -> ocr_pb2.RecognizeResponse:
    return await stub.Recognize(
        ocr_pb2.RecognizeRequest(image=rgb_to_image(rgb), **kwargs), timeout=300
    )


def speckled_page(n: int, seed: int = 5) -> np.ndarray:
    """A 1600 x 1600 page of ``n`` tiny scattered words (6-10 px): thousands of candidate boxes."""
    rng = random.Random(seed)
    hanzi = hanzi_pool()
    canvas = Image.new("RGB", (1600, 1600), "white")
    draw = ImageDraw.Draw(canvas)
    fonts = [
        ImageFont.truetype(str(FONT_DIR / "NotoSansCJK-Regular.ttc"), s, index=SC_FACE)
        for s in (6, 8, 10)
    ]
    for _ in range(n):
        text = "".join(rng.choice(hanzi) for _ in range(rng.randint(1, 3)))
        draw.text(
            (rng.randint(0, 1580), rng.randint(0, 1585)),
            text,
            font=rng.choice(fonts),
            fill=(0, 0, 0),
        )
    return np.asarray(canvas)


# --- pure functions ---------------------------------------------------------


def test_detection_size_caps_the_long_side_and_lifts_small_images() -> None:
    cfg = DetectionConfig(min_side=736, max_side=2000)
    assert detection_size(8000, 6000, cfg) == (1984, 1504)
    assert max(detection_size(50, 20000, cfg)) <= 2000
    h, w = detection_size(100, 200, cfg)
    assert (h, w) == (736, 1472) and h % 32 == 0 and w % 32 == 0
    assert min(detection_size(1, 1, cfg)) >= 32


def test_width_buckets() -> None:
    buckets = [160, 320, 640]
    assert width_bucket((48, 100), 48, buckets) == 160
    assert width_bucket((24, 100), 48, buckets) == 320  # 200 px once scaled to height 48
    assert (
        width_bucket((10, 5000), 48, buckets) == 640
    )  # wider than every bucket: squeezed into the widest


def test_ctc_decoder_collapses_repeats_and_blanks() -> None:
    decoder = CtcDecoder(ensure_ocr_models() / "ppocr_rec" / "1" / "dict.txt")
    assert len(decoder) == 18710
    index = {c: i for i, c in enumerate(decoder.characters) if c}
    steps = ["中", "中", "", "中", "文", "", "", " ", "A", "A"]
    probs = np.full((len(steps), len(decoder)), 1e-4, np.float32)
    for t, ch in enumerate(steps):
        probs[t, index[ch] if ch else 0] = 0.9
    text, confidence = decoder.decode(probs)
    assert text == "中中文 A"
    assert confidence == pytest.approx(0.9)
    only_blanks = np.zeros((3, len(decoder)), np.float32)
    only_blanks[:, 0] = 1.0
    assert decoder.decode(only_blanks) == ("", 0.0)


def test_short_lines_need_a_sure_recogniser_and_detector() -> None:
    limits = LimitsConfig()
    assert (
        text_weight("出口", 2) == 4 and text_weight("EXIT", 2) == 4 and text_weight("B 2", 2) == 2
    )
    # A round object read as "8": confident recogniser, weak text evidence from the detector.
    assert not keep_line("8", 0.99, 0.52, 0.5, limits)
    assert not keep_line("0", 0.68, 0.80, 0.5, limits)
    assert keep_line("8", 0.99, 0.85, 0.5, limits)
    # Long lines are judged by the request's bar alone; short ones by the higher of the two.
    assert keep_line("Coffee Shop", 0.6, 0.55, 0.5, limits)
    assert not keep_line("Coffee Shop", 0.4, 0.9, 0.5, limits)
    assert not keep_line("出口", 0.93, 0.9, 0.95, limits)
    assert not keep_line("  ", 1.0, 1.0, 0.5, limits)
    assert keep_line("0", 0.6, 0.5, 0.5, LimitsConfig(short_line_weight=0))
    # A split-off piece of a longer line ("03:" beside "50 (2/60)") has the long line as context.
    assert not keep_line("03:", 0.99, 0.74, 0.5, limits)
    assert keep_line("03:", 0.99, 0.74, 0.5, limits, beside_long_line=True)
    assert not keep_line("03:", 0.4, 0.74, 0.5, limits, beside_long_line=True)


def test_reading_order_rows_then_columns() -> None:
    def box(x: float, y: float) -> TextBox:
        return TextBox(
            np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]], np.float32), 1.0
        )

    boxes = [box(200, 52), box(10, 0), box(10, 50), box(200, 3)]
    assert [(b.quad[0, 0], b.quad[0, 1]) for b in reading_order(boxes)] == [
        (10, 0),
        (200, 3),
        (10, 50),
        (200, 52),
    ]


# --- through the service ----------------------------------------------------


async def test_blank_and_tiny_images_give_an_empty_answer(
    stub: ocr_pb2_grpc.OcrServiceStub,
) -> None:
    for rgb in (
        np.full((480, 640, 3), 255, np.uint8),
        np.zeros((300, 300, 3), np.uint8),
        np.full((2, 3, 3), 90, np.uint8),
    ):
        response = await recognize(stub, rgb)
        assert list(response.lines) == [] and response.full_text == ""
    one_pixel_noise = np.random.default_rng(0).integers(0, 255, (1, 1, 3), dtype=np.uint8)
    assert list((await recognize(stub, one_pixel_noise)).lines) == []


async def test_huge_image_is_bounded_and_still_read(stub: ocr_pb2_grpc.OcrServiceStub) -> None:
    rgb, _ = draw_lines(["超大图片中的文字", "Large image text"], size=120, width=1800)
    page = np.full((3000, 4000, 3), 255, np.uint8)
    page[1000 : 1000 + rgb.shape[0], 1000 : 1000 + rgb.shape[1]] = rgb
    # Sent as PNG: 36 MB of raw pixels is past the 16 MiB a service takes per message.
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, "PNG")
    start = time.perf_counter()
    response = await stub.Recognize(
        ocr_pb2.RecognizeRequest(image=common_pb2.Image(encoded=buf.getvalue())), timeout=300
    )
    assert time.perf_counter() - start < 30
    assert [line.text for line in response.lines] == ["超大图片中的文字", "Large image text"]
    # Polygons are in the pixels of the image sent, not of the detector's downscaled copy.
    assert (
        900 < response.lines[0].polygon.points[0].x < 1200
        and 950 < response.lines[0].polygon.points[0].y < 1200
    )


async def test_thousands_of_tiny_boxes_are_capped(stub: ocr_pb2_grpc.OcrServiceStub) -> None:
    start = time.perf_counter()
    response = await recognize(stub, speckled_page(4000), min_confidence=0.01, max_lines=1000)
    assert time.perf_counter() - start < 45
    # The page holds thousands of candidate regions: the cap, not the page, sets the work.
    assert MAX_BOXES // 2 <= len(response.lines) <= MAX_BOXES


async def test_request_limits(stub: ocr_pb2_grpc.OcrServiceStub) -> None:
    rgb, _ = draw_lines(["第一行文字", "second line", "第三行 third"])
    assert len((await recognize(stub, rgb)).lines) == 3
    assert [line.text for line in (await recognize(stub, rgb, max_lines=2)).lines] == [
        "第一行文字",
        "second line",
    ]
    strict = await recognize(stub, rgb, min_confidence=1.0)
    assert all(line.confidence >= 1.0 for line in strict.lines)


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"max_lines": -1}, "max_lines"),
        ({"max_lines": 100000}, "max_lines must be 0 (service default) or 1..1000"),
        ({"min_confidence": 1.5}, "min_confidence"),
    ],
)
async def test_bad_limits_are_invalid_argument(
    stub: ocr_pb2_grpc.OcrServiceStub, request_fields: dict[str, float], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await recognize(stub, np.full((64, 64, 3), 255, np.uint8), **request_fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_missing_or_corrupt_image_is_invalid_argument(
    stub: ocr_pb2_grpc.OcrServiceStub,
) -> None:
    for request in (
        ocr_pb2.RecognizeRequest(),
        ocr_pb2.RecognizeRequest(image=common_pb2.Image(encoded=b"not an image")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recognize(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_dictionary_file_is_in_the_repository() -> None:
    root: Path = ensure_ocr_models()
    assert (root / "ppocr_rec" / "1" / "dict.txt").read_text(encoding="utf-8").count("\n") == 18708
