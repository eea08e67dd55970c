"""Entry point of the face service: ``visionmesh serve face``."""

from __future__ import annotations

import sys

from services.common.runner import ServiceDefinition, run_service
from services.common.server import Registration
from services.face.config import DEFAULT_PORT, FaceConfig
from services.face.servicer import FaceServicer
from visionmesh.v1 import face_pb2, face_pb2_grpc


def build(config: FaceConfig) -> list[Registration]:
    servicer = FaceServicer(config)
    return [Registration.of(face_pb2, face_pb2_grpc, "FaceService", servicer)]


DEFINITION = ServiceDefinition("face", FaceConfig, build, DEFAULT_PORT)

if __name__ == "__main__":
    run_service(DEFINITION, sys.argv[1:])
