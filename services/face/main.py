"""The face service's definition, run by ``visionmesh serve face`` or ``python -m
services.face``."""

from __future__ import annotations

from services.common.runner import ServiceDefinition
from services.common.server import Registration
from services.face.config import DEFAULT_PORT, FaceConfig
from services.face.servicer import FaceServicer
from visionmesh.v1 import face_pb2, face_pb2_grpc


def build(config: FaceConfig) -> list[Registration]:
    servicer = FaceServicer(config)
    return [Registration.of(face_pb2, face_pb2_grpc, "FaceService", servicer)]


DEFINITION = ServiceDefinition("face", FaceConfig, build, DEFAULT_PORT)
