"""Entry point of the classify service: ``visionmesh serve classify``."""

from __future__ import annotations

import sys

from services.classify.config import ClassifyConfig
from services.classify.servicer import ClassifyServicer
from services.common.runner import ServiceDefinition, run_service
from services.common.server import Registration
from visionmesh import features
from visionmesh.v1 import classify_pb2, classify_pb2_grpc


def build(config: ClassifyConfig) -> list[Registration]:
    servicer = ClassifyServicer(config)
    return [Registration.of(classify_pb2, classify_pb2_grpc, "ClassifyService", servicer)]


DEFINITION = ServiceDefinition(
    "classify", ClassifyConfig, build, features.by_name("classify").default_port
)

if __name__ == "__main__":
    run_service(DEFINITION, sys.argv[1:])
