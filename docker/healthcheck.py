"""Container HEALTHCHECK: ask the local server's grpc.health.v1 whether it is SERVING.

The port comes from VISIONMESH_SERVER__PORT, or VISIONMESH_HEALTH_PORT; when
neither is set (the port was given as a flag) every default VisionMesh port is
tried and the first that answers decides. Exit 0 = healthy, 1 = not.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = (50050, 50051, 50052, 50053, 50054)


def check(port: int, timeout_s: float = 2.0) -> bool | None:
    """True = SERVING, False = answered otherwise, None = nothing there."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return (
            None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else False
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    named = os.environ.get("VISIONMESH_HEALTH_PORT") or os.environ.get("VISIONMESH_SERVER__PORT")
    ports = (int(named),) if named else DEFAULT_PORTS
    for port in ports:
        verdict = check(port)
        if verdict is not None:
            return 0 if verdict else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
