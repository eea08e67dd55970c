"""Rendered text images with known ground truth, for OCR accuracy tests and benchmarks.

Text is drawn with Debian's ``fonts-noto-cjk`` (Sans and Serif, Regular and
Bold): random Chinese (GB2312 level-1 characters), English words, digits and
punctuation. "clean" images are dark text on plain light paper; "hard" ones
add photos from scikit-image, gradients, coloured and outlined text, small
rotations, blur, noise and JPEG compression. Everything derives from one
seed, so a set is the same on every machine with the same fonts.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/opentype/noto")
FONT_FILES = [
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJK-Bold.ttc",
    "NotoSerifCJK-Regular.ttc",
    "NotoSerifCJK-Bold.ttc",
]
# Face index of "Noto ... CJK SC" (Simplified Chinese glyph forms) inside each .ttc.
SC_FACE = 2
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]

WORDS = (
    "the of and to in is for on with as by at from this that be are was or an not "
    "have it can all more new one about time "
    "data model image video service search upload review content safety policy "
    "account user music travel food family "
    "price order number today city world open free best show news game sport photo "
    "share light water green river north "
    "market report system network cloud server update version guide online mobile "
    "phone email address office school "
    "Beijing Shanghai London Paris China Monday Friday January March OCR API HTTP GPU Python"
).split()
PUNCT_EN = [",", ".", ":", "!", "?", "-", "(", ")", "/", "&"]
PUNCT_ZH = ["，", "。", "：", "、", "！", "？"]


def hanzi_pool() -> list[str]:
    """The 3,755 GB2312 level-1 characters (the commonest simplified Chinese)."""
    chars = []
    for row in range(0xB0, 0xD8):
        for col in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, col]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return chars


@dataclass(frozen=True)
class RenderedLine:
    text: str
    quad: np.ndarray  # 4 x 2 float32, tl/tr/br/bl, pixels of the final image


@dataclass(frozen=True)
class RenderedImage:
    rgb: np.ndarray
    lines: list[RenderedLine]
    style: str  # "clean" or "hard"


class TextSampler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hanzi = hanzi_pool()

    def chinese(self) -> str:
        n = self.rng.randint(4, 12)
        chars = [self.rng.choice(self.hanzi) for _ in range(n)]
        if n > 6 and self.rng.random() < 0.5:
            chars.insert(self.rng.randint(2, n - 2), self.rng.choice(PUNCT_ZH[:2]))
        if self.rng.random() < 0.3:
            chars.append(self.rng.choice(PUNCT_ZH[1:]))
        return "".join(chars)

    def english(self) -> str:
        words = [self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 5))]
        if self.rng.random() < 0.5:
            words[0] = words[0].capitalize()
        if self.rng.random() < 0.4:
            i = self.rng.randrange(len(words))
            words[i] += self.rng.choice(PUNCT_EN[:5])
        return " ".join(words)

    def digits(self) -> str:
        r = self.rng
        forms = [
            lambda: f"{r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
            lambda: f"{r.randint(1, 99999):,}.{r.randint(0, 99):02d}",
            lambda: f"Tel: {r.randint(130, 189)} {r.randint(1000, 9999)} {r.randint(1000, 9999)}",
            lambda: f"{r.randint(1, 100)}.{r.randint(0, 9)}%",
            lambda: f"No. {r.randint(100, 99999)}",
            lambda: (
                f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d} "
                f"({r.randint(1, 9)}/{r.randint(10, 99)})"
            ),
        ]
        return r.choice(forms)()

    def mixed(self) -> str:
        r = self.rng
        zh = "".join(r.choice(self.hanzi) for _ in range(r.randint(2, 5)))
        return r.choice(
            [
                f"{zh}{r.randint(1, 999)}",
                f"{zh} {r.choice(WORDS)}",
                f"{r.choice(WORDS).upper()} {zh}：{r.randint(10, 99)}",
            ]
        )

    def line(self) -> str:
        kind = self.rng.choices(["zh", "en", "digits", "mixed"], weights=[4, 3, 2, 1])[0]
        return getattr(
            self, {"zh": "chinese", "en": "english", "digits": "digits", "mixed": "mixed"}[kind]
        )()


def _background(rng: random.Random, hard: bool, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if not hard:
        tone = rng.randint(225, 255)
        return np.full((h, w, 3), [tone, tone, rng.randint(215, 255)], np.uint8)
    kind = rng.choice(["photo", "photo", "gradient", "flat"])
    if kind == "photo":
        import skimage.data

        photo = getattr(skimage.data, rng.choice(PHOTOS))()
        photo = photo if photo.ndim == 3 else np.stack([photo] * 3, -1)
        return cv2.resize(
            np.ascontiguousarray(photo[..., :3]), (w, h), interpolation=cv2.INTER_AREA
        )
    if kind == "gradient":
        a, b = (np.array([rng.randint(0, 255) for _ in range(3)], np.float32) for _ in range(2))
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8)
    return np.full((h, w, 3), [rng.randint(0, 255) for _ in range(3)], np.uint8)


def _text_colour(
    rng: random.Random, region: np.ndarray, hard: bool
) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """A fill that contrasts with the region under the line, plus an outline colour (subtitle
    style) or None."""
    if not hard:
        return (rng.randint(0, 50), rng.randint(0, 50), rng.randint(0, 70)), None
    luminance = float(region.mean()) if region.size else 128.0
    dark = luminance > 128
    base = rng.randint(0, 60) if dark else rng.randint(200, 255)
    fill = tuple(int(np.clip(base + rng.randint(-40, 40), 0, 255)) for _ in range(3))
    outline = (255 - base,) * 3 if rng.random() < 0.5 else None
    return fill, outline  # type: ignore[return-value]


def render_image(
    sampler: TextSampler, rng: random.Random, hard: bool, lines_per_image: int
) -> RenderedImage:
    width = rng.choice([480, 640, 800])
    sizes = [
        rng.randint(22, 40) if not hard else rng.randint(18, 44) for _ in range(lines_per_image)
    ]
    gap = 14
    height = sum(int(s * 1.5) + gap for s in sizes) + 40
    canvas = Image.fromarray(_background(rng, hard, (width, height)))
    draw = ImageDraw.Draw(canvas)
    truths: list[RenderedLine] = []
    y = 20
    for size in sizes:
        text = sampler.line()
        font_file = rng.choice(FONT_FILES)
        font = ImageFont.truetype(str(FONT_DIR / font_file), size, index=SC_FACE)
        while draw.textlength(text, font=font) > width - 40 and size > 12:
            size -= 2
            font = ImageFont.truetype(str(FONT_DIR / font_file), size, index=SC_FACE)
        x = rng.randint(10, max(10, int(width - 20 - draw.textlength(text, font=font))))
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        fill, outline = _text_colour(rng, np.asarray(canvas)[top:bottom, left:right], hard)
        draw.text(
            (x, y),
            text,
            font=font,
            fill=fill,
            stroke_width=2 if outline else 0,
            stroke_fill=outline,
        )
        quad = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], np.float32)
        truths.append(RenderedLine(text, quad))
        y += int(size * 1.5) + gap
    rgb = np.asarray(canvas)
    if hard:
        rgb, truths = _degrade(rng, rgb, truths)
    return RenderedImage(np.ascontiguousarray(rgb), truths, "hard" if hard else "clean")


def _degrade(
    rng: random.Random, rgb: np.ndarray, truths: list[RenderedLine]
) -> tuple[np.ndarray, list[RenderedLine]]:
    """Small rotation, blur, sensor noise and JPEG compression; quads follow the rotation."""
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-4, 4), 1.0)
    rgb = cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    truths = [
        RenderedLine(t.text, cv2.transform(t.quad[None], matrix)[0].astype(np.float32))
        for t in truths
    ]
    if rng.random() < 0.3:
        rgb = cv2.GaussianBlur(rgb, (3, 3), 0)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(2, 8), rgb.shape)
    rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=rng.randint(55, 90))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), truths


def render_set(lines: int, seed: int, hard: bool, lines_per_image: int = 4) -> list[RenderedImage]:
    """Images holding ``lines`` text lines in all, the same for the same seed."""
    rng = random.Random(seed)
    sampler = TextSampler(rng)
    images = []
    while lines > 0:
        n = min(lines_per_image, lines)
        images.append(render_image(sampler, rng, hard, n))
        lines -= n
    return images


if __name__ == "__main__":  # write a few samples to look at
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ocr_render")
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(render_set(16, 7, False) + render_set(16, 7, True)):
        Image.fromarray(img.rgb).save(out / f"{i:02d}_{img.style}.png")
        print(i, img.style, [t.text for t in img.lines])
