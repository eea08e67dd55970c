"""A real OTLP/gRPC receiver and a traced client, each run as its own process.

``python tests/otlp_support.py receive PORT OUT`` serves the OTLP TraceService
(the exporter package's generated gRPC service) on 127.0.0.1:PORT and appends one
JSON line per received span to OUT. ``python tests/otlp_support.py analyze
GATEWAY PHOTO ENDPOINT`` makes one traced Analyze call through the gateway and
exports its spans to the receiver.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: Path) -> None:
        self.out = out

    async def Export(  # noqa: N802 (the generated service's name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": attributes.get("service.name", ""),
                                "name": span.name,
                                "kind": span.kind,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                            }
                        )
                    )
        with self.out.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return trace_service_pb2.ExportTraceServiceResponse()


async def receive(port: int, out: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("receiving", flush=True)
    await stop.wait()
    await server.stop(1)


async def analyze(gateway: str, photo: Path, endpoint: str) -> None:
    from services.common import tracing
    from services.common.config import OtlpConfig
    from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    provider = tracing.setup("client", "otlp", OtlpConfig(endpoint=endpoint, insecure=True))
    async with grpc.aio.insecure_channel(
        gateway, interceptors=tracing.client_interceptors()
    ) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with tracing.tracer("client").start_as_current_span("client analyze"):
            reply = await stub.Analyze(
                gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=photo.read_bytes())),
                timeout=120,
            )
    provider.shutdown()
    print(json.dumps({"errors": len(reply.errors), "tags": len(reply.tags)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        asyncio.run(receive(int(sys.argv[2]), Path(sys.argv[3])))
    else:
        asyncio.run(analyze(sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
