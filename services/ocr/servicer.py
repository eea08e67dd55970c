"""OcrService: text lines with polygons from the PP-OCR pipeline."""

from __future__ import annotations

import grpc

from services.common.batch_rpc import answer_each
from services.common.deadline import Deadline
from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.protos import decode_image
from services.common.rpc import grpc_method, request_deadline
from services.ocr.config import OcrConfig
from services.ocr.pipeline import OcrPipeline, RecognizedLine
from visionmesh.v1 import common_pb2, ocr_pb2, ocr_pb2_grpc


def line_to_proto(line: RecognizedLine) -> ocr_pb2.TextLine:
    polygon = common_pb2.Polygon(
        points=[common_pb2.Point(x=float(x), y=float(y)) for x, y in line.quad]
    )
    return ocr_pb2.TextLine(
        text=line.text, confidence=line.confidence, polygon=polygon, angle=line.angle
    )


class OcrServicer(ocr_pb2_grpc.OcrServiceServicer):
    def __init__(self, config: OcrConfig) -> None:
        self.config = config
        self.image_limits = ImageLimits.from_config(config.images)
        self.pipeline = OcrPipeline(config)
        self.image_limits = ImageLimits.from_config(config.images)

    async def start(self) -> None:
        await self.pipeline.start()

    async def close(self) -> None:
        await self.pipeline.close()

    def _limits(self, request: ocr_pb2.RecognizeRequest) -> tuple[int, float]:
        limits = self.config.limits
        if request.max_lines < 0:
            raise InvalidInput(f"max_lines must be >= 0, got {request.max_lines}")
        if request.max_lines > limits.max_lines_cap:
            raise InvalidInput(
                f"max_lines {request.max_lines} is over this service's cap of "
                f"{limits.max_lines_cap}"
            )
        if not 0.0 <= request.min_confidence <= 1.0:
            raise InvalidInput(
                f"min_confidence must be within [0, 1], got {request.min_confidence}"
            )
        return (
            request.max_lines or limits.max_lines,
            request.min_confidence or limits.min_confidence,
        )

    @grpc_method
    async def Recognize(
        self, request: ocr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> ocr_pb2.RecognizeResponse:
        return await self._recognize(request, request_deadline(context))

    @grpc_method
    async def RecognizeBatch(
        self, request: ocr_pb2.RecognizeBatchRequest, context: grpc.aio.ServicerContext
    ) -> ocr_pb2.RecognizeBatchResponse:
        deadline = request_deadline(context)
        responses = await answer_each(request.requests, lambda r: self._recognize(r, deadline))
        return ocr_pb2.RecognizeBatchResponse(responses=responses)

    async def _recognize(
        self, request: ocr_pb2.RecognizeRequest, deadline: Deadline
    ) -> ocr_pb2.RecognizeResponse:
        max_lines, min_confidence = self._limits(request)
        rgb = (await decode_image(request.image, self.image_limits)).rgb
        lines = await self.pipeline.recognise(rgb, min_confidence, max_lines, deadline)
        return ocr_pb2.RecognizeResponse(
            lines=[line_to_proto(x) for x in lines], full_text="\n".join(x.text for x in lines)
        )
