"""ClassifyService: taxonomy tags, content safety and image quality in one call.

The image is decoded once; the content classifier (EfficientNet-Lite0) and the
safety model (open_nsfw) run concurrently, each through its own dynamic
batcher, while quality is measured on the same decoded pixels in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np

from services.classify import quality as quality_mod
from services.classify import safety as safety_mod
from services.classify.config import ClassifyConfig
from services.classify.preprocess import softmax, to_tensor
from services.classify.taxonomy import Taxonomy, load_taxonomy
from services.common.deadline import Deadline
from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.models import ServedModel
from services.common.protos import box, image_to_rgb
from services.common.rpc import grpc_method, request_deadline
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2

MAX_TOP_K = 1000


class ClassifyServicer(classify_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.image_limits = ImageLimits.from_config(config.images)
        self.classifier = ServedModel(config.classifier)
        self.safety_model = ServedModel(config.safety_model)
        self.labels = self.classifier.entry.labels()
        tax_file = Path(config.taxonomy.file) if config.taxonomy.file else None
        self.taxonomy: Taxonomy = load_taxonomy(tax_file, num_classes=len(self.labels))
        self.safety = safety_mod.SafetyChecker(self.safety_model, config.safety)

    async def start(self) -> None:
        await asyncio.gather(self.classifier.start(), self.safety_model.start())

    async def close(self) -> None:
        await asyncio.gather(self.classifier.close(), self.safety_model.close())

    async def _class_probs(self, rgb: np.ndarray, deadline: Deadline) -> np.ndarray:
        # Preprocessing is CPU work: keep it off the event loop.
        tensor = await asyncio.to_thread(to_tensor, rgb, self.classifier.entry.preprocessing)
        out = await self.classifier.infer({"images": tensor}, deadline)
        return softmax(out["logits"][0])

    @grpc_method
    async def Classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidInput(
                f"top_k is {request.top_k}: it must be between 0 (service default) and {MAX_TOP_K}"
            )
        rgb = image_to_rgb(request.image, self.image_limits)
        deadline = request_deadline(context)
        probs, safety, quality = await asyncio.gather(
            self._class_probs(rgb, deadline),
            self.safety.assess(rgb, deadline),
            asyncio.to_thread(quality_mod.assess, rgb, self.config.quality),
        )
        top = np.argsort(-probs)[: request.top_k or self.config.top_k]
        labels = [
            classify_pb2.Label(class_index=int(i), name=self.labels[i], score=float(probs[i]))
            for i in top
        ]
        tags = [
            common_pb2.Tag(
                name=s.tag.name,
                score=s.score,
                source="classify",
                display_name_en=s.tag.display_name_en,
                display_name_zh=s.tag.display_name_zh,
            )
            for s in self.taxonomy.rank(
                probs, self.config.taxonomy.min_score, self.config.taxonomy.max_tags
            )
        ]
        tags.append(_safety_tag(safety))
        tags.extend(_quality_tag(v) for v in quality.verdicts)
        tags.sort(key=lambda t: -t.score)
        return classify_pb2.ClassifyResponse(
            labels=labels,
            tags=tags,
            safety=classify_pb2.SafetyResult(
                nsfw_score=safety.nsfw_score,
                verdict=safety.verdict,
                second_look=safety.second_look,
                region=box(*safety.region) if safety.region else None,
            ),
            quality=classify_pb2.QualityResult(
                brightness=quality.brightness,
                contrast=quality.contrast,
                sharpness=quality.sharpness,
                verdicts=[v.name for v in quality.verdicts],
            ),
        )


def _safety_tag(safety: safety_mod.SafetyAssessment) -> common_pb2.Tag:
    en, zh = safety_mod.DISPLAY_NAMES[safety.tag_name]
    tag = common_pb2.Tag(
        name=safety.tag_name,
        score=safety.tag_score,
        source="safety",
        display_name_en=en,
        display_name_zh=zh,
    )
    if safety.region:
        tag.box.CopyFrom(box(*safety.region))
    return tag


def _quality_tag(verdict: quality_mod.QualityVerdict) -> common_pb2.Tag:
    en, zh = quality_mod.DISPLAY_NAMES[verdict.name]
    return common_pb2.Tag(
        name=verdict.name,
        score=verdict.score,
        source="quality",
        display_name_en=en,
        display_name_zh=zh,
    )
