"""Frames -> one code: EfficientNet-Lite0 pooled features (through the batcher) -> projection.

A video is several frames of one item: each frame's features are L2-normalised
and averaged, and the mean is projected -- one video-level code that sits near
the codes of its frames' content.
"""

from __future__ import annotations

import asyncio

import numpy as np

from services.common.deadline import NO_DEADLINE, Deadline
from services.common.pipeline import Pipeline
from services.common.repository import load_entry
from services.hash.config import HashConfig
from services.hash.preprocess import normalise_view, to_batch
from services.hash.projection import Projection, l2_normalise


class Encoder(Pipeline):
    def __init__(self, config: HashConfig) -> None:
        super().__init__()
        self.model = self.serve(config.features)
        entry = load_entry(config.projection.model, config.projection.version)
        self.projection = Projection.load(
            entry.file(str(entry.extra.get("projection", "projection.npz")))
        )
        self.method = config.projection.method
        # How the projection's training images were viewed (older entries: as they are).
        view = entry.extra.get("view") or {}
        self.trim = bool(view.get("trim_borders", False))
        self.grey = bool(view.get("grey", False))

    async def features(
        self, frames: list[np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> np.ndarray:
        """The item's aggregated feature vector (mean of its frames' L2-normalised features)."""
        # Preprocessing is CPU work: keep it off the event loop.
        batch = await asyncio.to_thread(self._batch, frames)
        out = await self.model.infer({"images": batch}, deadline)
        return l2_normalise(out["features"]).mean(axis=0)

    def _batch(self, frames: list[np.ndarray]) -> np.ndarray:
        views = [normalise_view(f, self.trim, self.grey) for f in frames]
        return to_batch(views, self.model.entry.preprocessing)

    def code(self, features: np.ndarray, bits: int) -> np.ndarray:
        return self.projection.encode(features.reshape(1, -1), self.method, bits)[0]
