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
    full_name = face_pb2.DESCRIPTOR.services_by_name["FaceService"].full_name
    return [Registration(full_name, servicer, face_pb2_grpc.add_FaceServiceServicer_to_server)]


DEFINITION = ServiceDefinition("face", FaceConfig, build, DEFAULT_PORT)

if __name__ == "__main__":
    run_service(DEFINITION, sys.argv[1:])
