"""Shared helpers of the OCR tests: a running OCR service and drawn text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.common.repository import default_root
from tools.ocr_render import FONT_DIR, SC_FACE

OCR_MODELS = ("ppocr_det", "ppocr_cls", "ppocr_rec")


def ensure_ocr_models() -> Path:
    """Build the three OCR entries when missing (a file copy from the rapidocr wheel; no network)."""
    from visionmesh.models_build import build

    build(only=OCR_MODELS)
    return default_root()


def draw_lines(
    lines: list[str], size: int = 32, width: int = 640, font: str = "NotoSansCJK-Regular.ttc"
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Dark text on white paper, one line under the other; returns the image and each line's box."""
    face = ImageFont.truetype(str(FONT_DIR / font), size, index=SC_FACE)
    height = 30 + len(lines) * int(size * 2)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for i, text in enumerate(lines):
        xy = (30, 20 + i * int(size * 2))
        draw.text(xy, text, font=face, fill=(20, 20, 20))
        boxes.append(tuple(int(v) for v in draw.textbbox(xy, text, font=face)))
    return np.asarray(canvas), boxes  # type: ignore[return-value]
