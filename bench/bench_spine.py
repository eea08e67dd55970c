"""Spine benchmark: what serving costs — classify service vs its bare engine, gateway overhead.

    .venv/bin/python -m bench.bench_spine [--seconds 4] [--rounds 5] [--batch 32] [--concurrency 64]
    [--requests 60]

In alternating rounds (bench/harness.py):

1. throughput at saturation, in steady state (bench/load.py): the classify
   service (raw pixels over gRPC, validation, preprocessing, batching, both
   models, quality) vs the same work on its two bare ONNX Runtime sessions
   (both preprocessings, both models, quality; no gRPC, no batcher) — the ratio
   is what serving costs — and vs the two sessions alone on tensors made in
   advance, which shows what the preprocessing itself costs;
2. latency, one call at a time: classify called directly vs through the
   gateway's Analyze (classify only, cache off), each round ``--requests``
   calls of each, interleaved; the gateway overhead is the difference of the
   p50s, per round. The same pair again on a second mesh with the tracing
   interceptors off (``server.tracing=false``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import grpc
import numpy as np
import skimage.data
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bench_classify import BARE_WORKERS, BarePipeline, service_throughput
from bench.common import percentiles_ms
from bench.harness import Goal, Ratio, Report, Side, alternate, fmt
from bench.load import CpuPerItem, worker_rate
from services.common.images import decode
from tests.support import encode
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc


def bare_engine(pipeline: BarePipeline, seconds: float, workers: int) -> float:
    """Images/s of the two sessions alone on pre-made tensors, ``workers`` threads each on a
    batch."""
    lite, nsfw = pipeline.lite, pipeline.nsfw
    from services.classify.preprocess import to_tensor
    from services.classify.safety import nsfw_input

    imgs = pipeline.batch_of(0)
    x_lite = np.concatenate([to_tensor(im, lite.preprocessing) for im in imgs])
    x_nsfw = np.stack([nsfw_input(im, nsfw.preprocessing) for im in imgs])

    def step(_: int) -> int:
        pipeline.s_lite.run(None, {lite.inputs[0].name: x_lite})
        pipeline.s_nsfw.run(None, {nsfw.inputs[0].name: x_nsfw})
        return len(imgs)

    return worker_rate(step, workers, seconds)


class LatencyPair:
    """Sequential calls: classify directly, then the same image through the gateway, interleaved."""

    def __init__(self, gateway: str, classify: str, n: int) -> None:
        self.gateway, self.classify, self.n = gateway, classify, n
        self.last: tuple[float, float] = (0.0, 0.0)
        data = encode(skimage.data.chelsea())
        self.direct_req = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=data))
        self.gw_req = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=data),
            features=[common_pb2.FEATURE_CLASSIFY],
            options=gateway_pb2.AnalyzeOptions(no_cache=True),
        )

    async def _measure(self) -> tuple[float, float]:
        async with (
            grpc.aio.insecure_channel(self.gateway) as gch,
            grpc.aio.insecure_channel(self.classify) as cch,
        ):
            gw = gateway_pb2_grpc.GatewayServiceStub(gch)
            direct = classify_pb2_grpc.ClassifyServiceStub(cch)
            for _ in range(3):  # fresh channels: connect before timing
                await gw.Analyze(self.gw_req, timeout=60)
                await direct.Classify(self.direct_req, timeout=60)
            gw_s, direct_s = [], []
            for _ in range(self.n):
                t = time.perf_counter()
                await direct.Classify(self.direct_req, timeout=60)
                direct_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                await gw.Analyze(self.gw_req, timeout=60)
                gw_s.append(time.perf_counter() - t)
        return percentiles_ms(direct_s)["p50"], percentiles_ms(gw_s)["p50"]

    def direct_p50(self) -> float:
        """Measures the pair; returns the direct p50 (the gateway's is kept for gateway_p50)."""
        self.last = asyncio.run(self._measure())
        return self.last[0]

    def gateway_p50(self) -> float:
        return self.last[1]


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


def cpu_table(service: CpuPerItem, bare: CpuPerItem) -> str:
    """Where the throughput sides' CPU went, per image (medians of the rounds, warm-up
    included)."""

    def row(label: str, account: CpuPerItem, name: str) -> str:
        cpu, faults = account.cpu_ms[name], account.faults[name]
        return (
            f"| {label} | {statistics.median(cpu):.1f} ms | {statistics.median(faults):.0f} | "
            f"{', '.join(f'{v:.1f}' for v in cpu)} |"
        )

    return "\n".join(
        [
            "| CPU per image (this process and the service's, from /proc) | median | page "
            "faults | rounds (ms) |",
            "|---|---:|---:|---|",
            row("classify service process, at saturation", service, "service"),
            row("its load generator (gRPC client tasks, this process)", service, "client"),
            row("the same work on the bare sessions (this process)", bare, "bare"),
        ]
    )


def classify_args(batch: int, tracing: bool) -> list[str]:
    settings = [
        f"{model}.{key}"
        for model in ("classifier", "safety_model")
        for key in (
            f"batcher.max_batch_size={batch}",
            "batcher.max_queue_delay_us=5000",
            "batcher.max_queue_size=1024",
            "engine.threads=1",
            f"batcher.instances={BARE_WORKERS}",
        )
    ]
    if not tracing:
        settings.append("server.tracing=false")
    return [a for s in settings for a in ("--set", s)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--requests", type=int, default=60, help="sequential calls per side per round"
    )
    args = parser.parse_args()

    report = Report("spine", "Spine: classify service vs bare engine, gateway overhead")
    pipeline = BarePipeline(args.batch, threads=1)
    traced = LocalMesh(
        services=["classify"], extra_args={"classify": classify_args(args.batch, True)}
    )
    untraced = LocalMesh(
        services=["classify"],
        extra_args={
            "classify": classify_args(args.batch, False),
            "gateway": ["--set", "server.tracing=false"],
        },
    )
    try:
        gw_t = traced.start()
        gw_u = untraced.start()
        classify_t = traced.processes["classify"].address
        service_cpu = CpuPerItem(
            {"service": traced.processes["classify"].process.pid, "client": os.getpid()}
        )
        bare_cpu = CpuPerItem({"bare": os.getpid()})
        on = LatencyPair(gw_t, classify_t, args.requests)
        off = LatencyPair(gw_u, untraced.processes["classify"].address, args.requests)
        s = args.seconds
        sides = [
            Side("service", f"classify service at saturation, max_batch_size {args.batch}",
                 f"1 ORT intra-op thread per model instance, {BARE_WORKERS} instances per model",
                 f"{args.concurrency} gRPC client tasks",
                 "gRPC, raw-pixel validation, both preprocessings, both models, quality",
                 lambda: asyncio.run(
                     service_throughput(classify_t, s, args.concurrency, service_cpu.mark))),
            Side("bare", f"the same work on the bare sessions, batch {args.batch}",
                 "1 ORT intra-op thread per session", f"{BARE_WORKERS} worker threads",
                 "both preprocessings, both models' forward passes, quality",
                 lambda: pipeline.throughput(s, BARE_WORKERS, bare_cpu.mark)),
            Side("engine", f"bare engine: the two ORT sessions, batch {args.batch}",
                 "1 ORT intra-op thread per session", f"{BARE_WORKERS} worker threads",
                 "the two models' forward passes on pre-made tensors only",
                 lambda: bare_engine(pipeline, s, workers=BARE_WORKERS)),
            Side("direct", "classify called directly, p50", "service: 1 per model",
                 "1 call at a time", "one Classify call (JPEG)", on.direct_p50, unit="ms"),
            Side("gateway", "gateway Analyze (classify only, cache off), p50", "as above",
                 "1 call at a time, interleaved with the direct calls",
                 "one Analyze call: validating decode, hop to classify", on.gateway_p50, unit="ms"),
            Side("direct_nt", "classify directly, tracing off, p50", "service: 1 per model",
                 "1 call at a time", "one Classify call", off.direct_p50, unit="ms"),
            Side("gateway_nt", "gateway Analyze, tracing off, p50", "as above",
                 "1 call at a time, interleaved with the direct calls", "one Analyze call",
                 off.gateway_p50, unit="ms"),
        ]  # fmt: skip
        values = alternate(sides, args.rounds)
        hop = asyncio.run(hop_ms(gw_t))
    finally:
        traced.stop()
        untraced.stop()
    validate = decode_ms(encode(skimage.data.chelsea()))
    report.add(
        f"{args.rounds} rounds after a warm-up round, sides in turn within each round; the latency "
        f"sides are {args.requests} sequential calls each per round, direct and "
        "gateway interleaved "
        "call by call. Both meshes (tracing on / off) run all the time, idle while "
        "the other is measured."
    )
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio("service / bare engine, same work", "service", "bare", Goal(">=", 0.9)),
            Ratio("service / forward passes only", "service", "engine"),
            Ratio("bare same work / forward passes only", "bare", "engine"),
            Ratio("gateway / direct p50", "gateway", "direct"),
            Ratio("gateway / direct p50, tracing off", "gateway_nt", "direct_nt"),
        ],
    )
    report.add(cpu_table(service_cpu, bare_cpu))
    overhead = [g - d for g, d in zip(values["gateway"], values["direct"], strict=True)]
    overhead_nt = [g - d for g, d in zip(values["gateway_nt"], values["direct_nt"], strict=True)]
    goal = Goal("<=", 2.0)
    report.add(
        "| gateway overhead at p50 (gateway p50 - direct p50, per round) | median | rounds |\n"
        "|---|---:|---|\n"
        f"| tracing on | {statistics.median(overhead):.2f} ms | "
        f"{', '.join(f'{v:.2f}' for v in overhead)} |\n"
        f"| tracing off | {statistics.median(overhead_nt):.2f} ms | "
        f"{', '.join(f'{v:.2f}' for v in overhead_nt)} |\n"
        "| a bare gRPC round trip to the gateway (health check, p50, after the "
        f"rounds) | {hop:.2f} ms | |\n"
        "| the gateway's validating decode of this JPEG (this process, after the "
        f"rounds) | {validate:.2f} ms | |\n\n"
        + goal.sentence("gateway overhead at p50 (ms, tracing on)", statistics.median(overhead))
        + f" The round trip and the decode together are {fmt(hop + validate)} ms of it."
    )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
