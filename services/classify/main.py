"""The classify service's definition, run by ``visionmesh serve classify`` or ``python -m
services.classify``."""

from __future__ import annotations

from services.classify.config import DEFAULT_PORT, ClassifyConfig
from services.classify.servicer import ClassifyServicer
from services.common.runner import ServiceDefinition
from services.common.server import Registration
from visionmesh.v1 import classify_pb2, classify_pb2_grpc


def build(config: ClassifyConfig) -> list[Registration]:
    servicer = ClassifyServicer(config)
    return [Registration.of(classify_pb2, classify_pb2_grpc, "ClassifyService", servicer)]


DEFINITION = ServiceDefinition("classify", ClassifyConfig, build, DEFAULT_PORT)
