"""The detection service's definition, run by ``visionmesh serve detect`` or ``python -m
services.detect``."""

from __future__ import annotations

from services.common.runner import ServiceDefinition
from services.common.server import Registration
from services.detect.config import DEFAULT_PORT, DetectConfig
from services.detect.servicer import DetectServicer
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


def build(config: DetectConfig) -> list[Registration]:
    servicer = DetectServicer(config)
    return [Registration.of(detect_pb2, detect_pb2_grpc, "DetectionService", servicer)]


DEFINITION = ServiceDefinition("detect", DetectConfig, build, DEFAULT_PORT)
