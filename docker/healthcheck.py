"""Container and Kubernetes probe: ask the local server's grpc.health.v1 whether it is SERVING.

``healthcheck.py [--service NAME]`` checks ``NAME`` (default ``""``, the whole server).
The port comes from VISIONMESH_HEALTH_PORT or VISIONMESH_SERVER__PORT; when neither
is set (the port was given as a flag) every default VisionMesh port is tried and the
first that answers decides. When the server has a certificate
(VISIONMESH_SERVER__TLS__CERT_FILE/KEY_FILE/CA_FILE) the probe speaks mutual TLS with
that same certificate, checking the server's against the CA under the name
VISIONMESH_HEALTH_TLS_NAME (the Service's DNS name). Exit 0 = healthy, 1 = not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = (50050, 50051, 50052, 50053, 50054, 50055)


def channel(port: int) -> grpc.Channel:
    target = f"127.0.0.1:{port}"
    cert = os.environ.get("VISIONMESH_SERVER__TLS__CERT_FILE")
    if not cert:
        return grpc.insecure_channel(target)
    key = os.environ["VISIONMESH_SERVER__TLS__KEY_FILE"]
    ca = os.environ.get("VISIONMESH_SERVER__TLS__CA_FILE")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    name = os.environ.get("VISIONMESH_HEALTH_TLS_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(port: int, service: str = "", timeout_s: float = 2.0) -> bool | None:
    """True = SERVING, False = answered otherwise, None = nothing there."""
    try:
        with channel(port) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return (
            None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            else False
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="", help="health service name ('' = the server)")
    args = parser.parse_args(argv)
    named = os.environ.get("VISIONMESH_HEALTH_PORT") or os.environ.get("VISIONMESH_SERVER__PORT")
    ports = (int(named),) if named else DEFAULT_PORTS
    for port in ports:
        verdict = check(port, args.service)
        if verdict is not None:
            return 0 if verdict else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
