"""Spine benchmark: what serving costs — classify service vs its bare engine, gateway overhead.

    .venv/bin/python -m bench.bench_spine [--seconds 4] [--rounds 5] [--batch 32] [--concurrency 64]
    [--requests 120]

In alternating rounds (bench/harness.py):

1. throughput at saturation, in steady state (bench/load.py): the classify
   service (raw pixels over gRPC, validation, preprocessing, batching, both
   models, quality) vs the same work on its two bare ONNX Runtime sessions
   (both preprocessings, both models, quality; no gRPC, no batcher) — the ratio
   is what serving costs — and vs the two sessions alone on tensors made in
   advance, which shows what the preprocessing itself costs;
2. latency, one call at a time: classify called directly, through the
   gateway's Analyze (classify only, cache off) and through a bare grpc.aio
   forwarder (bench/forwarder.py), each round ``--requests`` calls of each, in
   turn call by call; the gateway overhead is the difference of the p50s, per
   round, and the forwarder splits it into what any Python gRPC hop costs here
   and what the gateway's own code adds. Direct and gateway again on a second
   mesh with tracing off (``server.tracing=false``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc
import numpy as np
import skimage.data
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bench_classify import BARE_WORKERS, BarePipeline, service_throughput
from bench.common import percentiles_ms
from bench.harness import Goal, Ratio, Report, Side, alternate
from bench.load import CpuPerItem, worker_rate
from services.common.images import decode
from services.common.net import free_port
from tests.support import encode
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc


def bare_engine(
    pipeline: BarePipeline,
    seconds: float,
    workers: int,
    mark: Callable[[int], None] | None = None,
) -> float:
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

    return worker_rate(step, workers, seconds, mark)


Call = Callable[[grpc.aio.Channel], Callable[[], Awaitable[object]]]


class InterleavedCalls:
    """One call at a time to several targets, each in turn (the order rotating call by call), so
    every target meets the same moments of the machine; a round's figures are the p50s.

    ``value(key)`` is a side's measure: the first target's runs the round, the others read
    its figures (``alternate`` measures the sides of one round in their listed order).

    ``paired[key]`` holds, round by round, the median over turns of the target's call minus
    the first target's call of the same turn (ms): the calls of one turn are adjacent in time,
    so a slow moment of the machine moves both of a pair, where it moves one p50 more than the
    other when it falls on fewer of one target's calls.
    """

    def __init__(self, targets: dict[str, tuple[str, Call]], n: int) -> None:
        self.targets, self.n = targets, n
        self.first = next(iter(targets))
        self.last: dict[str, float] = {}
        self.paired: dict[str, list[float]] = {key: [] for key in targets if key != self.first}

    async def _round(self) -> dict[str, float]:
        channels = [grpc.aio.insecure_channel(address) for address, _ in self.targets.values()]
        try:
            calls = [
                make(ch) for ch, (_, make) in zip(channels, self.targets.values(), strict=True)
            ]
            for _ in range(3):  # fresh channels: connect before timing
                for call in calls:
                    await call()
            samples: list[list[float]] = [[] for _ in calls]
            for i in range(self.n):
                for j in range(len(calls)):
                    k = (i + j) % len(calls)
                    start = time.perf_counter()
                    await calls[k]()
                    samples[k].append(time.perf_counter() - start)
        finally:
            for ch in channels:
                await ch.close()
        by_key = dict(zip(self.targets, samples, strict=True))
        for key, rounds in self.paired.items():
            pairs = zip(by_key[key], by_key[self.first], strict=True)
            rounds.append(statistics.median(a - b for a, b in pairs) * 1000)
        return {key: percentiles_ms(s)["p50"] for key, s in by_key.items()}

    def value(self, key: str) -> float:
        if key == self.first:
            self.last = asyncio.run(self._round())
        return self.last[key]


def classify_call(request: classify_pb2.ClassifyRequest) -> Call:
    def make(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        return lambda: stub.Classify(request, timeout=60)

    return make


def analyze_call(request: gateway_pb2.AnalyzeRequest) -> Call:
    def make(channel: grpc.aio.Channel) -> Callable[[], Awaitable[object]]:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        return lambda: stub.Analyze(request, timeout=60)

    return make


@contextlib.contextmanager
def forwarder(target: str) -> Iterator[str]:
    """``bench.forwarder`` in front of ``target``, on a free loopback port; yields its address."""
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.forwarder", "--port", str(port), "--target", target],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"forwarding"
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


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


def cpu_table(service: CpuPerItem, bare: CpuPerItem, engine: CpuPerItem) -> str:
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
            row(
                "of which its engine threads (the models' runs, batch stacking)",
                service,
                "engine threads",
            ),
            row("its load generator (gRPC client tasks, this process)", service, "client"),
            row("the same work on the bare sessions (this process)", bare, "bare"),
            row("the forward passes alone on the bare sessions (this process)", engine, "engine"),
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
        "--requests", type=int, default=120, help="sequential calls per side per round"
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
    with contextlib.ExitStack() as stack:
        stack.callback(untraced.stop)
        stack.callback(traced.stop)
        gw_t = traced.start()
        gw_u = untraced.start()
        classify_t = traced.processes["classify"].address
        service_pid = traced.processes["classify"].process.pid
        service_cpu = CpuPerItem(
            {"service": service_pid, "client": os.getpid()},
            # The batcher names its worker threads so (services/common/batcher.py).
            threads={"engine threads": (service_pid, "engine-")},
        )
        bare_cpu = CpuPerItem({"bare": os.getpid()})
        engine_cpu = CpuPerItem({"engine": os.getpid()})
        data = encode(skimage.data.chelsea())
        classify_req = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=data))
        analyze_req = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=data),
            features=[common_pb2.FEATURE_CLASSIFY],
            options=gateway_pb2.AnalyzeOptions(no_cache=True),
        )
        forwarding = stack.enter_context(forwarder(classify_t))
        on = InterleavedCalls(
            {
                "direct": (classify_t, classify_call(classify_req)),
                "gateway": (gw_t, analyze_call(analyze_req)),
                "forwarder": (forwarding, classify_call(classify_req)),
            },
            args.requests,
        )
        off = InterleavedCalls(
            {
                "direct_nt": (untraced.processes["classify"].address, classify_call(classify_req)),
                "gateway_nt": (gw_u, analyze_call(analyze_req)),
            },
            args.requests,
        )
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
                 lambda: bare_engine(pipeline, s, BARE_WORKERS, engine_cpu.mark)),
            Side("direct", "classify called directly, p50", "service: 1 per model",
                 "1 call at a time", "one Classify call (JPEG)",
                 lambda: on.value("direct"), unit="ms"),
            Side("gateway", "gateway Analyze (classify only, cache off), p50", "as above",
                 "1 call at a time, in turn with the direct and forwarder calls",
                 "one Analyze call: header check, hop to classify, merge",
                 lambda: on.value("gateway"), unit="ms"),
            Side("forwarder", "bare grpc.aio forwarder in front of classify (bench/forwarder.py), "
                 "p50", "as above", "1 call at a time, in turn with the others",
                 "one Classify call through a server that only forwards it",
                 lambda: on.value("forwarder"), unit="ms"),
            Side("direct_nt", "classify directly, tracing off, p50", "service: 1 per model",
                 "1 call at a time", "one Classify call", lambda: off.value("direct_nt"),
                 unit="ms"),
            Side("gateway_nt", "gateway Analyze, tracing off, p50", "as above",
                 "1 call at a time, in turn with the direct calls", "one Analyze call",
                 lambda: off.value("gateway_nt"), unit="ms"),
        ]  # fmt: skip
        values = alternate(sides, args.rounds)
        hop = asyncio.run(hop_ms(gw_t))
    validate = decode_ms(encode(skimage.data.chelsea()))
    report.add(
        f"{args.rounds} rounds after a warm-up round, sides in turn within each round; the latency "
        f"sides are {args.requests} sequential calls each per round, the targets of one mesh "
        "in turn call by call (direct, gateway and forwarder; direct and gateway with "
        "tracing off). Both meshes (tracing on / off) run all the time, idle while "
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
    report.add(cpu_table(service_cpu, bare_cpu, engine_cpu))

    def per_round(a: str, b: str) -> list[float]:
        return [x - y for x, y in zip(values[a], values[b], strict=True)]

    def row(label: str, rounds: list[float]) -> str:
        return (
            f"| {label} | {statistics.median(rounds):.2f} ms | "
            f"{', '.join(f'{v:.2f}' for v in rounds)} |\n"
        )

    overhead = per_round("gateway", "direct")
    goal = Goal("<=", 2.0)
    report.add(
        "| p50 differences, per round | median | rounds |\n"
        "|---|---:|---|\n"
        + row("gateway overhead: gateway - direct, tracing on", overhead)
        + row(
            "gateway overhead: gateway - direct, tracing off", per_round("gateway_nt", "direct_nt")
        )
        + row("a bare Python gRPC hop: forwarder - direct", per_round("forwarder", "direct"))
        + row("the gateway's own code: gateway - forwarder", per_round("gateway", "forwarder"))
        + row(
            "gateway overhead, paired: median over turns of gateway - direct, tracing on",
            on.paired["gateway"][-args.rounds :],
        )
        + row(
            "gateway overhead, paired, tracing off",
            off.paired["gateway_nt"][-args.rounds :],
        )
        + row(
            "a bare Python gRPC hop, paired: forwarder - direct",
            on.paired["forwarder"][-args.rounds :],
        )
        + "| a bare gRPC round trip to the gateway (health check, back to back, p50, after the "
        f"rounds) | {hop:.2f} ms | |\n"
        "| the validating decode of this JPEG, which the gateway skips when the header check "
        f"passes (this process, after the rounds) | {validate:.2f} ms | |\n\n"
        + goal.sentence("gateway overhead at p50 (ms, tracing on)", statistics.median(overhead))
        + " Between calls each process idles about 35 ms (the calls are sequential), so every "
        "hop wakes an idle process: a round trip costs more here than back to back."
    )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
