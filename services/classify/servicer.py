"""ClassifyService: content labels from EfficientNet-Lite0 through the batcher."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from services.classify.config import ClassifyConfig
from services.classify.preprocess import softmax, to_tensor
from services.common.errors import grpc_method
from services.common.models import ServedModel
from services.common.protos import image_to_rgb
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2


class ClassifyServicer(classify_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.classifier = ServedModel(config.classifier)
        self.labels = self.classifier.entry.labels()

    async def start(self) -> None:
        await self.classifier.start()

    async def close(self) -> None:
        await self.classifier.close()

    @grpc_method
    async def Classify(self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext) -> classify_pb2.ClassifyResponse:
        rgb = image_to_rgb(request.image)
        # Preprocessing is CPU work: keep it off the event loop.
        tensor = await asyncio.to_thread(to_tensor, rgb, self.classifier.entry.preprocessing)
        out = await self.classifier.infer({"images": tensor}, context)
        probs = softmax(out["logits"][0])
        top_k = request.top_k or self.config.top_k
        top = np.argsort(-probs)[:top_k]
        labels = [classify_pb2.Label(class_index=int(i), name=self.labels[i], score=float(probs[i])) for i in top]
        tags = [common_pb2.Tag(name=f"imagenet/{lab.name.split(',')[0]}", score=lab.score, source="classify", display_name_en=lab.name.split(",")[0]) for lab in labels]
        return classify_pb2.ClassifyResponse(labels=labels, tags=tags)
