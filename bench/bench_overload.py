"""Overload ramp: concurrency 1 -> 512 against the whole mesh; is overload shed as
RESOURCE_EXHAUSTED?

    .venv/bin/python -m bench.bench_overload [--levels 1,2,4,...,512] [--seconds 15] [--deadline 5]

Starts every service and the gateway as separate processes on loopback, then
for each concurrency level runs that many closed-loop callers for ``--seconds``:
each sends ``Analyze`` (every feature, cache off, deadline ``--deadline``) of a
real photo, and on RESOURCE_EXHAUSTED waits the ``retry-after-ms`` the gateway
hinted (jittered, as a well-behaved client does) before its next call.

Per level it prints: goodput (full answers, every feature and no error, per
second), the share of calls refused or partly refused with RESOURCE_EXHAUSTED,
deadline misses (calls that ended DEADLINE_EXCEEDED or past their deadline,
plus feature errors DEADLINE_EXCEEDED), other errors, and p99 latency of the
answered calls. The goal: no deadline misses, what cannot be served is
RESOURCE_EXHAUSTED, and goodput at the top level >= 90 % of the best level.
``--write`` puts the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.common import machine, write_section
from services.common.errors import RETRY_AFTER_KEY
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEVELS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
# A client never sleeps longer than this on a hint (nor shorter than the floor).
MAX_BACKOFF_S = 30.0
MIN_BACKOFF_S = 0.05


@dataclass
class LevelStats:
    level: int
    seconds: float
    deadline_s: float
    calls: int = 0
    full: int = 0
    partial: int = 0
    refused: int = 0  # the whole call was RESOURCE_EXHAUSTED
    partly_refused: int = 0  # answered, some feature RESOURCE_EXHAUSTED
    deadline_misses: int = 0  # call DEADLINE_EXCEEDED or later than its deadline
    feature_deadline: int = 0  # answered, some feature DEADLINE_EXCEEDED
    other: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    refusal_latencies_s: list[float] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return self.full / self.seconds

    @property
    def exhausted_share(self) -> float:
        return (self.refused + self.partly_refused) / max(1, self.calls)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 99) * 1000) if self.latencies_s else 0.0

    @property
    def refusal_p99_ms(self) -> float:
        arr = self.refusal_latencies_s
        return float(np.percentile(arr, 99) * 1000) if arr else 0.0

    @property
    def max_ms(self) -> float:
        return max(self.latencies_s, default=0.0) * 1000


def _retry_after_s(trailing: grpc.aio.Metadata | None) -> float | None:
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            return int(value) / 1000
    return None


def photo() -> bytes:
    """A real photo with a face and some text: every feature has work to do."""
    return (ROOT / "samples" / "astronaut.jpg").read_bytes()


async def _caller(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    request: gateway_pb2.AnalyzeRequest,
    stats: LevelStats,
    stop_at: float,
    rng: random.Random,
) -> None:
    deadline = stats.deadline_s
    while time.monotonic() < stop_at:
        started = time.monotonic()
        call = stub.Analyze(request, timeout=deadline)
        hint: float | None = None
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            took = time.monotonic() - started
            stats.calls += 1
            code = exc.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                stats.refused += 1
                stats.refusal_latencies_s.append(took)
                hint = _retry_after_s(exc.trailing_metadata()) or 1.0
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED or took > deadline:
                stats.deadline_misses += 1
            else:
                stats.other[code.name] += 1
        else:
            took = time.monotonic() - started
            stats.calls += 1
            stats.latencies_s.append(took)
            codes = {e.code for e in reply.errors}
            if took > deadline:
                stats.deadline_misses += 1
            if not codes:
                stats.full += 1
            else:
                stats.partial += 1
                if "RESOURCE_EXHAUSTED" in codes:
                    stats.partly_refused += 1
                    hint = _retry_after_s(await call.trailing_metadata())
                if "DEADLINE_EXCEEDED" in codes:
                    stats.feature_deadline += 1
                for code_name in codes - {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}:
                    stats.other[code_name] += 1
        if hint is not None:
            pause = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, hint)) * rng.uniform(0.5, 1.5)
            await asyncio.sleep(min(pause, max(0.0, stop_at - time.monotonic())))


async def run_level(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    image: bytes,
    level: int,
    seconds: float,
    deadline_s: float,
    seed: int = 0,
) -> LevelStats:
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=image), options=gateway_pb2.AnalyzeOptions(no_cache=True)
    )
    stats = LevelStats(level, seconds, deadline_s)
    start = time.monotonic()
    rng = random.Random(seed + level)
    await asyncio.gather(
        *(_caller(stub, request, stats, start + seconds, rng) for _ in range(level))
    )
    # Calls still running at the end finish (within their deadline): the level lasted that long.
    stats.seconds = time.monotonic() - start
    return stats


async def ramp(
    address: str, levels: list[int], seconds: float, deadline_s: float, image: bytes
) -> list[LevelStats]:
    """Warm up, then run each level in turn on one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        warm = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=image),
            options=gateway_pb2.AnalyzeOptions(no_cache=True),
        )
        for _ in range(3):
            await stub.Analyze(warm, timeout=60)
        results = []
        for level in levels:
            stats = await run_level(stub, image, level, seconds, deadline_s)
            print(row(stats), flush=True)
            results.append(stats)
        return results


HEADER = (
    "| concurrency | calls | goodput (full answers/s) | RESOURCE_EXHAUSTED share | deadline misses "
    "| feature DEADLINE_EXCEEDED | other errors | p99 answered | max answered | p99 refusal |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(s: LevelStats) -> str:
    other = ", ".join(f"{k} {v}" for k, v in sorted(s.other.items())) or "0"
    return (
        f"| {s.level} | {s.calls} | {s.goodput:.2f} | {s.exhausted_share:.0%} | "
        f"{s.deadline_misses} "
        f"| {s.feature_deadline} | {other} | {s.p99_ms:.0f} ms | {s.max_ms:.0f} ms "
        f"| {s.refusal_p99_ms:.0f} ms |"
    )


def summary(results: list[LevelStats]) -> str:
    best = max(results, key=lambda s: s.goodput)
    top = results[-1]
    ratio = top.goodput / best.goodput if best.goodput else 0.0
    misses = sum(s.deadline_misses for s in results)
    feature_misses = sum(s.feature_deadline for s in results)
    return (
        f"Best goodput {best.goodput:.2f}/s at concurrency {best.level}; at {top.level}: "
        f"{top.goodput:.2f}/s = **{ratio:.0%} of the best** (goal >= 90 %). "
        f"Calls past their deadline: **{misses}**; answers with a feature "
        f"DEADLINE_EXCEEDED: {feature_misses}."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--deadline", type=float, default=5.0)
    parser.add_argument("--address", help="an already running gateway (default: start a mesh)")
    parser.add_argument(
        "--write", action="store_true", help="write the table to docs/benchmarks.md"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    image = photo()
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    load_before = os.getloadavg()
    mesh = None
    try:
        address = args.address
        if address is None:
            mesh = LocalMesh(
                log_dir=work / "logs",
                extra_args={"hash": ["--set", f"storage.data_dir={work / 'hash'}"]},
            )
            address = mesh.start()
        print(HEADER, flush=True)
        results = asyncio.run(ramp(address, levels, args.seconds, args.deadline, image))
    finally:
        if mesh is not None:
            mesh.stop()
    load_after = os.getloadavg()
    text = summary(results)
    loads = (
        "load average (1/5/15 min) "
        f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
        f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after"
    )
    print(text)
    print(loads)
    if args.write:
        body = (
            "\n"
            f"Command: `.venv/bin/python -m bench.bench_overload --levels {args.levels} "
            f"--seconds {args.seconds:g} --deadline {args.deadline:g}`\n"
            f"Machine: {machine()}; {loads}. Every service and the gateway as separate "
            "processes on loopback;\n"
            "`Analyze` of `samples/astronaut.jpg`, every feature, cache off, deadline "
            f"{args.deadline:g} s; closed-loop callers\n"
            "that wait the gateway's `retry-after-ms` (jittered) after RESOURCE_EXHAUSTED; "
            f"{args.seconds:g} s per level.\n"
            "\n"
            f"{HEADER}\n"
            f"{chr(10).join(row(s) for s in results)}\n"
            "\n"
            f"{text}\n"
        )
        write_section("Overload ramp", body, key="overload")


if __name__ == "__main__":
    main()
