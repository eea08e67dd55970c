"""Entry point of the detection service: ``visionmesh serve detect``."""

from __future__ import annotations

import sys

from services.common.runner import ServiceDefinition, run_service
from services.common.server import Registration
from services.detect.config import DEFAULT_PORT, DetectConfig
from services.detect.servicer import DetectServicer
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


def build(config: DetectConfig) -> list[Registration]:
    servicer = DetectServicer(config)
    return [Registration.of(detect_pb2, detect_pb2_grpc, "DetectionService", servicer)]


DEFINITION = ServiceDefinition("detect", DetectConfig, build, DEFAULT_PORT)

if __name__ == "__main__":
    run_service(DEFINITION, sys.argv[1:])
