"""Entry point of the OCR service: ``visionmesh serve ocr``."""

from __future__ import annotations

import sys

from services.common.runner import ServiceDefinition, run_service
from services.common.server import Registration
from services.ocr.config import DEFAULT_PORT, OcrConfig
from services.ocr.servicer import OcrServicer
from visionmesh.v1 import ocr_pb2, ocr_pb2_grpc


def build(config: OcrConfig) -> list[Registration]:
    servicer = OcrServicer(config)
    full_name = ocr_pb2.DESCRIPTOR.services_by_name["OcrService"].full_name
    return [Registration(full_name, servicer, ocr_pb2_grpc.add_OcrServiceServicer_to_server)]


DEFINITION = ServiceDefinition("ocr", OcrConfig, build, DEFAULT_PORT)

if __name__ == "__main__":
    run_service(DEFINITION, sys.argv[1:])
