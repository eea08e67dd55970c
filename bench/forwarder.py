"""The least a Python gRPC hop can cost: a bare grpc.aio server that forwards Classify calls.

    .venv/bin/python -m bench.forwarder --port 50990 --target 127.0.0.1:50052

No interceptors, validation, admission, discovery, retries or merging: one
channel, one stub, the caller's deadline passed on. ``bench_spine`` puts it
beside the gateway so the gateway's overhead splits into what any Python gRPC
hop costs on this machine and what the gateway's own code adds.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from visionmesh.v1 import classify_pb2, classify_pb2_grpc


class Forwarder(classify_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = classify_pb2_grpc.ClassifyServiceStub(self.channel)

    async def Classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        return await self.stub.Classify(request, timeout=context.time_remaining())


async def serve(host: str, port: int, target: str) -> None:
    server = grpc.aio.server()
    classify_pb2_grpc.add_ClassifyServiceServicer_to_server(Forwarder(target), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print("forwarding", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the classify service's address")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.target))


if __name__ == "__main__":
    main()
