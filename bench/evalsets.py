"""Tuning sets and held-out evaluation sets: which shipped images each tuned component saw.

Four components were tuned by looking at images: the face detector's O-Net
threshold (a hand in the group photo), the OCR short-line rule (photos that
misfired), the image-quality thresholds (a table over photos and degradations)
and the hash projection (trained on every scikit-image photo). Their tests on
those same images are regression tests; the figures in the docs come from the
*held-out* sets below, built from shipped images that tuning never saw
(scikit-image samples no tuning used, the images of the insightface==2.1 wheel
fetched by ``make testdata``) and composites made from them.

``TUNING[task]`` lists every source a component's tuning looked at;
``HELDOUT[task]`` the evaluation sources. ``check_split`` refuses an overlap —
by name and by pixels (the same picture under two names) — and runs on every
build and in tests/test_evalsets.py.

    .venv/bin/python -m bench.evalsets build [var/evalsets]   # the folders, one per set
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from services.hash.corpus import ALL_PHOTOS
from tools.testdata import INSIGHTFACE_DIR, missing_message

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "evalsets"

# Sources are "skimage:<name>" (scikit-image's bundled samples) or "insightface:<file>".
TUNING: dict[str, frozenset[str]] = {
    # The O-Net threshold was raised for a hand in t1.jpg; the face tests use these photos.
    "face": frozenset(
        {"insightface:t1.jpg", "skimage:astronaut", "skimage:coffee", "skimage:rocket"}
    ),
    # The short-line rule was built on these photos' misfires (docs/ocr.md) and its test uses them.
    "ocr-text-free": frozenset(
        f"skimage:{n}"
        for n in (
            "chelsea",
            "coffee",
            "astronaut",
            "rocket",
            "camera",
            "horse",
            "immunohistochemistry",
            "brick",
            "grass",
            "gravel",
            "moon",
            "clock",
            "hubble_deep_field",
            "colorwheel",
        )
    ),  # fmt: skip
    # The quality thresholds come from the table of `bench.bench_classify --quality-table`.
    "quality": frozenset(
        f"skimage:{n}"
        for n in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "camera",
            "coins",
            "page",
            "moon",
            "hubble_deep_field",
            "retina",
            "text",
            "gravel",
        )
    ),  # fmt: skip
    # The served projection is trained on every scikit-image photo (services/hash/corpus.py).
    "hash": frozenset(f"skimage:{n}" for n in ALL_PHOTOS),
}

MASKS = tuple(f"insightface:mask_{c}.jpg" for c in ("black", "blue", "green", "white"))
FACE_PHOTO = "insightface:Tom_Hanks_54745.png"

HELDOUT: dict[str, tuple[str, ...]] = {
    # Face-free backgrounds (checked by eye) and the one face photo, also pasted onto them.
    "face": (FACE_PHOTO, *MASKS, "skimage:brick", "skimage:grass", "skimage:cell", "skimage:retina",
             "skimage:logo", "skimage:colorwheel", "skimage:moon"),
    # Pictures with no text in them (checked by eye; t1.jpg is left out: playing cards).
    "ocr-text-free": (FACE_PHOTO, *MASKS, "skimage:cell", "skimage:retina", "skimage:logo"),
    "quality": (FACE_PHOTO, *MASKS, "insightface:t1.jpg", "skimage:brick", "skimage:grass",
                "skimage:cell", "skimage:logo", "skimage:clock", "skimage:colorwheel"),
    "hash": (FACE_PHOTO, *MASKS, "insightface:t1.jpg"),
}  # fmt: skip


def load(source: str) -> np.ndarray:
    """A source as H x W x 3 uint8 RGB."""
    kind, name = source.split(":", 1)
    if kind == "skimage":
        import skimage.data

        data = getattr(skimage.data, name)()
        if isinstance(data, tuple):
            data = data[0]
        if data.dtype == bool:
            data = data.astype(np.uint8) * 255
        if data.ndim == 2:
            data = np.stack([data] * 3, axis=-1)
        return np.ascontiguousarray(data[..., :3]).astype(np.uint8)
    if kind == "insightface":
        path = INSIGHTFACE_DIR / name
        if not path.is_file():
            raise FileNotFoundError(missing_message(path))
        return np.asarray(Image.open(path).convert("RGB"))
    raise ValueError(f"unknown source kind {kind!r} in {source!r}")


def fingerprint(rgb: np.ndarray) -> str:
    """Pixels at 32x32 grey, coarsely quantised: the same picture under two names matches."""
    small = cv2.resize(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA
    )
    return hashlib.sha1((small // 16).tobytes()).hexdigest()


def check_split(task: str) -> None:
    """Raise when a held-out source of ``task`` is one its tuning saw (by name or by pixels)."""
    by_name = set(HELDOUT[task]) & TUNING[task]
    if by_name:
        raise AssertionError(f"{task}: held-out sources used in tuning: {sorted(by_name)}")
    tuned = {fingerprint(load(s)): s for s in TUNING[task]}
    for source in HELDOUT[task]:
        twin = tuned.get(fingerprint(load(source)))
        if twin is not None:
            raise AssertionError(f"{task}: held-out {source} has the same pixels as tuning {twin}")


# Variants of a held-out picture (none of them the exact transforms tuning used).
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as is": lambda x: x,
    "mirrored": lambda x: np.ascontiguousarray(x[:, ::-1]),
    "turned 90": lambda x: np.ascontiguousarray(np.rot90(x)),
    "x2": lambda x: cv2.resize(x, (x.shape[1] * 2, x.shape[0] * 2), interpolation=cv2.INTER_CUBIC),
    "x0.5": lambda x: cv2.resize(
        x, (max(1, x.shape[1] // 2), max(1, x.shape[0] // 2)), interpolation=cv2.INTER_AREA
    ),
    "grey": lambda x: np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)] * 3, axis=-1),
    "JPEG q40": lambda x: jpeg(x, 40),
}


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@dataclass(frozen=True)
class FaceCase:
    name: str
    rgb: np.ndarray
    faces: tuple[tuple[int, int], ...]  # a point inside each face


def face_cases() -> list[FaceCase]:
    """The face photo alone and pasted at several sizes onto face-free backgrounds; the backgrounds
    alone."""
    face = load(FACE_PHOTO)
    fh, fw = face.shape[:2]
    cases = [
        FaceCase(
            "Tom_Hanks on grey, x3", _on_grey(face, 3), ((fw * 3 // 2 + 60, fh * 3 // 2 + 60),)
        )
    ]
    backgrounds = [s for s in HELDOUT["face"] if s != FACE_PHOTO]
    for i, bg_source in enumerate(backgrounds):
        bg = load(bg_source)
        cases.append(FaceCase(f"{bg_source} (no face)", bg, ()))
        size = (96, 140, 200)[i % 3]
        if min(bg.shape[:2]) < size + 20:
            continue
        scaled = cv2.resize(face, (size, size * fh // fw), interpolation=cv2.INTER_CUBIC)
        y, x = (bg.shape[0] - scaled.shape[0]) // 3, (bg.shape[1] - scaled.shape[1]) // 2
        out = bg.copy()
        out[y : y + scaled.shape[0], x : x + scaled.shape[1]] = scaled
        centre = (x + scaled.shape[1] // 2, y + scaled.shape[0] // 2)
        cases.append(FaceCase(f"Tom_Hanks {size} px on {bg_source}", out, (centre,)))
    return cases


def _on_grey(face: np.ndarray, scale: int) -> np.ndarray:
    big = cv2.resize(
        face, (face.shape[1] * scale, face.shape[0] * scale), interpolation=cv2.INTER_CUBIC
    )
    canvas = np.full((big.shape[0] + 120, big.shape[1] + 120, 3), 128, np.uint8)
    canvas[60 : 60 + big.shape[0], 60 : 60 + big.shape[1]] = big
    return canvas


def build(dest: Path = DEFAULT_DIR) -> None:
    """Write every set as PNG folders: DEST/<task>/{tuning,heldout}/<source>.png."""
    for task in TUNING:
        check_split(task)
        for split, sources in (("tuning", sorted(TUNING[task])), ("heldout", HELDOUT[task])):
            folder = dest / task / split
            folder.mkdir(parents=True, exist_ok=True)
            for source in sources:
                Image.fromarray(load(source)).save(folder / f"{source.replace(':', '_')}.png")
    faces = dest / "face" / "heldout-composites"
    faces.mkdir(parents=True, exist_ok=True)
    for case in face_cases():
        Image.fromarray(case.rgb).save(
            faces / f"{case.name.replace(':', '_').replace(' ', '_')}.png"
        )
    print(f"evaluation sets in {dest}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["build"]:
        raise SystemExit("usage: python -m bench.evalsets build [DEST]")
    build(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_DIR)
