"""The OCR service's definition, run by ``visionmesh serve ocr`` or ``python -m services.ocr``."""

from __future__ import annotations

from services.common.runner import ServiceDefinition
from services.common.server import Registration
from services.ocr.config import DEFAULT_PORT, OcrConfig
from services.ocr.servicer import OcrServicer
from visionmesh.v1 import ocr_pb2, ocr_pb2_grpc


def build(config: OcrConfig) -> list[Registration]:
    servicer = OcrServicer(config)
    return [Registration.of(ocr_pb2, ocr_pb2_grpc, "OcrService", servicer)]


DEFINITION = ServiceDefinition("ocr", OcrConfig, build, DEFAULT_PORT)
