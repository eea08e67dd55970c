"""Spine benchmark: classify service vs the bare ONNX Runtime session; gateway overhead.

    .venv/bin/python -m bench.bench_spine [--seconds 10] [--batch 32] [--concurrency 64]

1. Throughput at saturation: the classify service (decode of raw pixels,
   preprocessing, dynamic batching, gRPC) driven by many concurrent clients, vs
   the bare ``onnxruntime`` session running the same batch size back to back.
2. Latency: gateway ``Analyze`` (classify only, cache off) vs calling the
   classify service directly, one request at a time; p50/p99 and the difference.
Both run in the same invocation on the same machine; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
import numpy as np
import skimage.data
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bench_classify import bare_sessions
from bench.common import machine, percentiles_ms, write_section
from services.common.images import decode
from services.common.protos import rgb_to_image
from tests.support import encode
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc


async def service_throughput(address: str, seconds: float, concurrency: int) -> float:
    image = rgb_to_image(np.asarray(skimage.data.chelsea()))
    req = classify_pb2.ClassifyRequest(image=image)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        await stub.Classify(req, timeout=30)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.Classify(req, timeout=30)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def hop_ms(address: str, n: int = 300) -> float:
    """p50 of a bare gRPC round trip (health check): the floor of one extra hop."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            samples.append(time.perf_counter() - t)
    return percentiles_ms(samples[20:])["p50"]


def decode_ms(data: bytes, n: int = 100) -> float:
    decode(data)
    t = time.perf_counter()
    for _ in range(n):
        decode(data)
    return (time.perf_counter() - t) / n * 1000


async def latencies(
    gateway: str, classify: str, n: int
) -> tuple[dict[str, float], dict[str, float]]:
    data = encode(skimage.data.chelsea())
    direct_req = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=data))
    gw_req = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=data),
        features=[common_pb2.FEATURE_CLASSIFY],
        options=gateway_pb2.AnalyzeOptions(no_cache=True),
    )
    async with (
        grpc.aio.insecure_channel(gateway) as gch,
        grpc.aio.insecure_channel(classify) as cch,
    ):
        gw = gateway_pb2_grpc.GatewayServiceStub(gch)
        direct = classify_pb2_grpc.ClassifyServiceStub(cch)
        for _ in range(5):
            await gw.Analyze(gw_req, timeout=30)
            await direct.Classify(direct_req, timeout=30)
        gw_s, direct_s = [], []
        for _ in range(n):  # interleaved so drift affects both alike
            t = time.perf_counter()
            await direct.Classify(direct_req, timeout=30)
            direct_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            await gw.Analyze(gw_req, timeout=30)
            gw_s.append(time.perf_counter() - t)
    return percentiles_ms(direct_s), percentiles_ms(gw_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    bare, bare_lite = bare_sessions(args.batch, args.seconds)
    settings = [
        f"{model}.{key}"
        for model in ("classifier", "safety_model")
        for key in (
            f"batcher.max_batch_size={args.batch}",
            "batcher.max_queue_delay_us=5000",
            "batcher.max_queue_size=1024",
            "engine.threads=1",
        )
    ]
    extra = [a for s in settings for a in ("--set", s)]
    mesh = LocalMesh(services=["classify"], extra_args={"classify": extra})
    try:
        gateway = mesh.start()
        classify = mesh.processes["classify"].address
        service = asyncio.run(service_throughput(classify, args.seconds, args.concurrency))
        direct, via_gw = asyncio.run(latencies(gateway, classify, args.requests))
        hop = asyncio.run(hop_ms(gateway))
    finally:
        mesh.stop()
    # The same latency pair with the OpenTelemetry interceptors off everywhere.
    untraced = ["--set", "server.tracing=false"]
    mesh = LocalMesh(
        services=["classify"], extra_args={"classify": extra + untraced, "gateway": untraced}
    )
    try:
        gateway = mesh.start()
        direct_nt, via_gw_nt = asyncio.run(
            latencies(gateway, mesh.processes["classify"].address, args.requests)
        )
    finally:
        mesh.stop()
    ratio = service / bare
    overhead = via_gw["p50"] - direct["p50"]
    overhead_nt = via_gw_nt["p50"] - direct_nt["p50"]
    validate = decode_ms(encode(skimage.data.chelsea()))
    body = f"""
Command: `.venv/bin/python -m bench.bench_spine --seconds {args.seconds:g} --batch {args.batch} --concurrency {args.concurrency} --requests {args.requests}`
Machine: {machine()} (shared with other work; figures are medians/ratios of one run).

| what | figure |
|---|---|
| bare ONNX Runtime sessions of the service's two models (EfficientNet-Lite0 + open_nsfw), batch {args.batch}, back to back | {bare:.1f} images/s |
| (EfficientNet-Lite0 session alone, same batch) | ({bare_lite:.1f} images/s) |
| classify service at saturation (both models + quality; {args.concurrency} concurrent clients, max_batch_size {args.batch}, 1 ORT thread per model) | {service:.1f} images/s |
| **service / bare engine** (goal >= 0.9) | **{ratio:.2f}** |
| classify direct, p50 / p99 (sequential) | {direct["p50"]:.2f} / {direct["p99"]:.2f} ms |
| gateway Analyze (classify only, cache off), p50 / p99 | {via_gw["p50"]:.2f} / {via_gw["p99"]:.2f} ms |
| **gateway overhead at p50** (goal <= 2 ms) | **{overhead:.2f} ms** |
| same pair with tracing interceptors off (`server.tracing=false`): direct / gateway p50 | {direct_nt["p50"]:.2f} / {via_gw_nt["p50"]:.2f} ms |
| gateway overhead at p50, tracing off | {overhead_nt:.2f} ms |
| of which, at least: one bare gRPC round trip to the gateway (health check, p50) | {hop:.2f} ms |
| and the gateway's validating decode of this JPEG (in a worker thread) | {validate:.2f} ms |

The service figure includes gRPC, raw-pixel validation, preprocessing (resize,
crop, normalise, the NSFW model's JPEG round trip), image quality and batching,
with the load generator on the same 2 cores; the bare figure is the same two
models on pre-made tensors. Since issue 3 the classify service runs both models
on every image, so the bare reference runs both too. The gateway overhead is the
difference of two medians of ~45 ms calls on a 2-core machine (about 1 ms of
it is noise). Neither goal is met here: the service pays Python gRPC,
preprocessing and the load generator on the same two cores the bare sessions
have to themselves, and the gateway's extra hop plus validating decode are
already ~2 ms on this machine before any fan-out bookkeeping. A cProfile of
the gateway showed its own Python work well under 1 ms a call; the rest is
waiting on the loop, the decode thread and the second hop.
"""
    print(body)
    write_section("Spine: classify service vs bare engine, gateway overhead", body)


if __name__ == "__main__":
    main()
