"""The classify pipeline: content classifier, safety model and quality on one decoded image.

The classifier (EfficientNet-Lite0) and the safety model (open_nsfw) run
concurrently, each through its own dynamic batcher, while quality is measured
on the same pixels in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from services.classify import quality as quality_mod
from services.classify import safety as safety_mod
from services.classify.config import ClassifyConfig
from services.classify.preprocess import softmax, to_tensor
from services.classify.taxonomy import Taxonomy, load_taxonomy
from services.common.deadline import Deadline
from services.common.pipeline import Pipeline


class ClassifyPipeline(Pipeline):
    def __init__(self, config: ClassifyConfig) -> None:
        super().__init__()
        self.config = config
        self.classifier = self.serve(config.classifier)
        self.safety_model = self.serve(config.safety_model)
        self.labels = self.classifier.entry.labels()
        tax_file = Path(config.taxonomy.file) if config.taxonomy.file else None
        self.taxonomy: Taxonomy = load_taxonomy(tax_file, num_classes=len(self.labels))
        self.safety = safety_mod.SafetyChecker(self.safety_model, config.safety)

    async def class_probs(self, rgb: np.ndarray, deadline: Deadline) -> np.ndarray:
        # Preprocessing is CPU work: keep it off the event loop.
        tensor = await asyncio.to_thread(to_tensor, rgb, self.classifier.entry.preprocessing)
        out = await self.classifier.infer({"images": tensor}, deadline)
        return softmax(out["logits"][0])

    async def analyse(
        self, rgb: np.ndarray, deadline: Deadline
    ) -> tuple[np.ndarray, safety_mod.SafetyAssessment, quality_mod.QualityReport]:
        """(class probabilities, safety assessment, quality report) of one image."""
        probs, safety, quality = await asyncio.gather(
            self.class_probs(rgb, deadline),
            self.safety.assess(rgb, deadline),
            asyncio.to_thread(quality_mod.assess, rgb, self.config.quality),
        )
        return probs, safety, quality
