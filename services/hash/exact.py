"""The exact-copy tier: a PDQ code of each single image, kept beside its deep code.

The deep code (network features of the bar-trimmed grey view, projected to bits)
holds crops, captions and letterbox bars together, but heavy JPEG and downscaling
move the features of some pictures far; PDQ (Meta's perceptual hash: a 64 x 64 luma
DCT, 256 bits) is the opposite -- nearly exact under pixel-level edits, lost
under crops and bars. A search answers the PDQ matches within a tight radius
first, then the deep code's neighbours (docs/hash.md, "Exact-copy tier"). A video
(several frames) has no single picture to hash and gets no exact-tier code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np
import pdqhash

from services.hash.config import ExactTierConfig
from services.hash.validation import EXACT_BITS


def pdq(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """(packed 256-bit PDQ code, PDQ quality 0-100) of an ``H x W x 3`` uint8 image."""
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb, np.uint8))
    code = np.packbits(np.asarray(bits, bool))
    assert code.size * 8 == EXACT_BITS
    return code, int(quality)


@dataclass(frozen=True)
class ExactTier:
    config: ExactTierConfig

    async def code(self, frames: list[np.ndarray]) -> np.ndarray | None:
        """The item's exact-tier code: one image with enough detail, else none. PDQ is CPU work:
        it runs in a worker thread (only when there is an image to hash)."""
        if not self.config.enabled or len(frames) != 1:
            return None
        code, quality = await asyncio.to_thread(pdq, frames[0], self.config.max_side)
        return code if quality >= self.config.min_quality else None


def fuse(
    exact: list[tuple[str, int, int]], deep: list[tuple[str, int]], limit: int
) -> list[tuple[str, int, int | None]]:
    """One ranked answer: exact-tier matches ``(id, deep distance, PDQ distance)`` first, in
    PDQ order, then the deep code's ``(id, distance)`` not already named; at most ``limit``."""
    named = {item for item, _, _ in exact}
    fused: list[tuple[str, int, int | None]] = list(exact)
    fused += [(item, d, None) for item, d in deep if item not in named]
    return fused[:limit]
