"""The hash service's definition, run by ``visionmesh serve hash`` or ``python -m services.hash``."""

from __future__ import annotations

from services.common.runner import ServiceDefinition
from services.common.server import Registration
from services.hash.config import DEFAULT_PORT, HashConfig
from services.hash.servicer import HashServicer
from visionmesh.v1 import hash_pb2, hash_pb2_grpc


def build(config: HashConfig) -> list[Registration]:
    servicer = HashServicer(config)
    return [Registration.of(hash_pb2, hash_pb2_grpc, "HashService", servicer)]


DEFINITION = ServiceDefinition("hash", HashConfig, build, DEFAULT_PORT)
