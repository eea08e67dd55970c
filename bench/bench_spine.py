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
import onnxruntime as ort
import skimage.data

from bench.common import machine, percentiles_ms, write_section
from services.classify.preprocess import to_tensor
from services.common.protos import rgb_to_image
from services.common.repository import load_entry
from tests.conftest import encode
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc


def bare_engine(batch: int, seconds: float, threads: int) -> float:
    entry = load_entry("efficientnet_lite0")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(entry.onnx_path), opts, providers=["CPUExecutionProvider"])
    x = np.repeat(to_tensor(skimage.data.chelsea(), entry.preprocessing), batch, axis=0)
    session.run(None, {"images": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"images": x})
        done += batch
    return done / (time.perf_counter() - start)


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


async def latencies(gateway: str, classify: str, n: int) -> tuple[dict[str, float], dict[str, float]]:
    data = encode(skimage.data.chelsea())
    direct_req = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=data))
    gw_req = gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=data), features=[common_pb2.FEATURE_CLASSIFY], options=gateway_pb2.AnalyzeOptions(no_cache=True))
    async with grpc.aio.insecure_channel(gateway) as gch, grpc.aio.insecure_channel(classify) as cch:
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

    bare = bare_engine(args.batch, args.seconds, 0)
    batcher = [f"classifier.batcher.max_batch_size={args.batch}", "classifier.batcher.max_queue_delay_us=5000", "classifier.batcher.max_queue_size=1024"]
    extra = [a for s in batcher for a in ("--set", s)]
    mesh = LocalMesh(services=["classify"], extra_args={"classify": extra})
    try:
        gateway = mesh.start()
        classify = mesh.processes["classify"].address
        service = asyncio.run(service_throughput(classify, args.seconds, args.concurrency))
        direct, via_gw = asyncio.run(latencies(gateway, classify, args.requests))
    finally:
        mesh.stop()
    ratio = service / bare
    overhead = via_gw["p50"] - direct["p50"]
    body = f"""
Command: `.venv/bin/python -m bench.bench_spine --seconds {args.seconds:g} --batch {args.batch} --concurrency {args.concurrency} --requests {args.requests}`
Machine: {machine()} (shared with other work; figures are medians/ratios of one run).

| what | figure |
|---|---|
| bare ONNX Runtime session, batch {args.batch}, back to back | {bare:.1f} images/s |
| classify service at saturation ({args.concurrency} concurrent clients, max_batch_size {args.batch}) | {service:.1f} images/s |
| **service / bare engine** (goal >= 0.9) | **{ratio:.2f}** |
| classify direct, p50 / p99 (sequential) | {direct['p50']:.2f} / {direct['p99']:.2f} ms |
| gateway Analyze (classify only, cache off), p50 / p99 | {via_gw['p50']:.2f} / {via_gw['p99']:.2f} ms |
| **gateway overhead at p50** (goal <= 2 ms) | **{overhead:.2f} ms** |

The service figure includes gRPC, raw-pixel validation, preprocessing (resize,
crop, normalise) and batching, with the load generator on the same 2 cores;
the bare figure is the model alone on pre-made tensors.
"""
    print(body)
    write_section("Spine: classify service vs bare engine, gateway overhead", body)


if __name__ == "__main__":
    main()
