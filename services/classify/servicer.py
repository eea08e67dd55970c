"""ClassifyService: taxonomy tags, content safety and image quality in one call.

The image is decoded once (off the event loop); ``ClassifyPipeline`` runs the
models; this module turns the request into that call and its answer into tags.
"""

from __future__ import annotations

import grpc
import numpy as np

from services.classify import quality as quality_mod
from services.classify import safety as safety_mod
from services.classify.config import ClassifyConfig
from services.classify.pipeline import ClassifyPipeline
from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.protos import box, decode_image
from services.common.rpc import grpc_method, request_deadline
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2

MAX_TOP_K = 1000


class ClassifyServicer(classify_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.pipeline = ClassifyPipeline(config)
        self.image_limits = ImageLimits.from_config(config.images)

    async def start(self) -> None:
        await self.pipeline.start()

    async def close(self) -> None:
        await self.pipeline.close()

    @grpc_method
    async def Classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidInput(
                f"top_k is {request.top_k}: it must be between 0 (service default) and {MAX_TOP_K}"
            )
        rgb = (await decode_image(request.image, self.image_limits)).rgb
        pipeline = self.pipeline
        probs, safety, quality = await pipeline.analyse(rgb, request_deadline(context))
        top = np.argsort(-probs)[: request.top_k or self.config.top_k]
        labels = [
            classify_pb2.Label(class_index=int(i), name=pipeline.labels[i], score=float(probs[i]))
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
            for s in pipeline.taxonomy.rank(
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
