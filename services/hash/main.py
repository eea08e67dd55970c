"""The hash service's definition, run by ``visionmesh serve hash`` or ``python -m
services.hash``."""

from __future__ import annotations

from services.common.runner import ServiceDefinition
from services.common.server import Registration
from services.hash.config import DEFAULT_PORT, HashConfig
from services.hash.servicer import HashServicer
from visionmesh.v1 import hash_pb2, hash_pb2_grpc

# Get and Delete carry a collection name and an id only; the image RPCs keep
# server.max_message_bytes (what the gateway sends: a video's frames at most).
SMALL_REQUEST_BYTES = 64 * 1024


def build(config: HashConfig) -> list[Registration]:
    servicer = HashServicer(config)
    limits = {"Get": SMALL_REQUEST_BYTES, "Delete": SMALL_REQUEST_BYTES}
    return [Registration.of(hash_pb2, hash_pb2_grpc, "HashService", servicer, limits)]


DEFINITION = ServiceDefinition("hash", HashConfig, build, DEFAULT_PORT)
