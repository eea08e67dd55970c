"""Memory under load: a concurrency ramp, then a soak at the ramp's worst level; RSS per process.

    .venv/bin/python -m bench.bench_soak [--soak-seconds 600] [--interval 30] [--baseline]

Starts every service and the gateway as separate processes on loopback, runs
the overload ramp (bench/bench_overload.py callers, a few seconds per level)
reading every process's RSS after each level, picks the level after which the
mesh held the most memory (total RSS), and soaks at it for ``--soak-seconds``, reading RSS every
``--interval`` seconds. The goal: the soak ends within 20 % of the memory it
reached after its first minute (per process). ``--baseline`` runs the mesh
without the memory settings (glibc malloc untuned, ONNX Runtime's arena never
shrunk) to measure what they change. ``--write`` puts the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import grpc

from bench.bench_overload import photo, run_level
from bench.common import machine, write_section
from services.common.memory import rss_mb
from services.common.runner import model_configs
from visionmesh import registry
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

RAMP = [1, 4, 16, 64, 256, 512]
GOAL = 0.20


def rss_all(mesh: LocalMesh) -> dict[str, float]:
    return {name: rss_mb(proc.process.pid) for name, proc in mesh.processes.items() if proc.alive()}


def baseline_args(services: list[str]) -> dict[str, list[str]]:
    """Per service, flags that stop every model's periodic ONNX Runtime arena shrink."""
    out: dict[str, list[str]] = {}
    for name in services:
        cfg = registry.definition(name).config_cls()
        fields = [
            f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) in model_configs(cfg)
        ]
        out[name] = [a for f in fields for a in ("--set", f"{f}.engine.arena_shrink_period_s=0")]
    return out


async def soak(
    mesh: LocalMesh,
    levels: list[int],
    ramp_seconds: float,
    soak_seconds: float,
    interval_s: float,
    deadline_s: float,
    level: int | None,
) -> tuple[list[tuple[int, dict[str, float]]], int, list[tuple[float, dict[str, float]]], float]:
    image = photo()
    async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        warm = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=image),
            options=gateway_pb2.AnalyzeOptions(no_cache=True),
        )
        for _ in range(3):
            await stub.Analyze(warm, timeout=60)
        ramp_rss = [(0, rss_all(mesh))]
        for lvl in levels:
            await run_level(stub, image, lvl, ramp_seconds, deadline_s)
            ramp_rss.append((lvl, rss_all(mesh)))
            print(f"ramp {lvl}: {ramp_rss[-1][1]}", flush=True)
        if level is None:
            # The worst level: where the mesh held the most memory after running it.
            level = max((sum(rss.values()), lvl) for lvl, rss in ramp_rss[1:])[1]
        samples: list[tuple[float, dict[str, float]]] = []
        start = time.monotonic()

        async def sample() -> None:
            while True:
                samples.append((time.monotonic() - start, rss_all(mesh)))
                print(f"soak {samples[-1][0]:.0f}s: {samples[-1][1]}", flush=True)
                await asyncio.sleep(interval_s)

        sampler = asyncio.create_task(sample())
        stats = await run_level(stub, image, level, soak_seconds, deadline_s)
        sampler.cancel()
        samples.append((time.monotonic() - start, rss_all(mesh)))
        return ramp_rss, level, samples, stats.goodput


def table(
    ramp_rss: list[tuple[int, dict[str, float]]],
    level: int,
    samples: list[tuple[float, dict[str, float]]],
) -> tuple[str, str, bool]:
    names = list(samples[0][1])
    head = "| " + " | ".join(["when", *names]) + " |\n|---|" + "---:|" * len(names)
    ramp_rows = [
        "| "
        + " | ".join(
            [f"after ramp level {lvl}" if lvl else "start", *(f"{r[n]:.0f}" for n in names)]
        )
        + " |"
        for lvl, r in ramp_rss
    ]
    soak_rows = [
        "| " + " | ".join([f"soak at {level}, {t:.0f} s", *(f"{r[n]:.0f}" for n in names)]) + " |"
        for t, r in samples
    ]
    # Reference: the first sample at or after one minute (or the last, for short runs).
    ref = next((r for t, r in samples if t >= 60), samples[-1][1])
    end = samples[-1][1]
    verdicts = []
    ok = True
    for n in names:
        change = (end[n] - ref[n]) / ref[n]
        ok &= change <= GOAL
        verdicts.append(f"{n} {ref[n]:.0f} -> {end[n]:.0f} MiB ({change:+.0%})")
    verdict = (
        "End of soak vs. its first minute: "
        + "; ".join(verdicts)
        + f" — {'within' if ok else 'NOT within'} the +{GOAL:.0%} goal."
    )
    return head + "\n" + "\n".join(ramp_rows + soak_rows), verdict, ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default=",".join(map(str, RAMP)))
    parser.add_argument("--ramp-seconds", type=float, default=10.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=5.0)
    parser.add_argument("--level", type=int, help="soak at this level (default: the ramp's worst)")
    parser.add_argument("--baseline", action="store_true", help="without the memory settings")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    services = [s for s in registry.available() if s != "gateway"]
    extra = {"hash": ["--set", f"storage.data_dir={work / 'hash'}"]}
    saved_env = os.environ.get("VISIONMESH_MALLOC_TUNING")
    if args.baseline:
        os.environ["VISIONMESH_MALLOC_TUNING"] = "off"
        for name, flags in baseline_args(services).items():
            extra[name] = [*extra.get(name, []), *flags]
    load_before = os.getloadavg()
    mesh = LocalMesh(services=services, log_dir=work / "logs", extra_args=extra)
    try:
        mesh.start()
        ramp_rss, level, samples, goodput = asyncio.run(
            soak(
                mesh,
                levels,
                args.ramp_seconds,
                args.soak_seconds,
                args.interval,
                args.deadline,
                args.level,
            )
        )
    finally:
        mesh.stop()
        if saved_env is None:
            os.environ.pop("VISIONMESH_MALLOC_TUNING", None)
    load_after = os.getloadavg()
    text, verdict, _ = table(ramp_rss, level, samples)
    loads = (
        "load average (1/5/15 min) "
        f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
        f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after"
    )
    mode = (
        "baseline (glibc malloc untuned, ONNX Runtime arena never shrunk)"
        if args.baseline
        else "default settings"
    )
    print(text)
    print(verdict)
    print(f"soak goodput {goodput:.2f} full answers/s; {loads}")
    if args.write:
        body = (
            "\n"
            f"Command: `.venv/bin/python -m bench.bench_soak --levels {args.levels} "
            f"--ramp-seconds {args.ramp_seconds:g} --soak-seconds {args.soak_seconds:g} "
            f"--interval {args.interval:g}{' --baseline' if args.baseline else ''}`\n"
            f"Machine: {machine()}; {loads}. Mesh {mode}; RSS in MiB per process.\n"
            "\n"
            f"{text}\n"
            "\n"
            f"{verdict} Goodput during the soak: {goodput:.2f} full answers/s.\n"
        )
        write_section(
            "Memory soak" + (" (baseline)" if args.baseline else ""),
            body,
            key="soak-baseline" if args.baseline else "soak",
        )


if __name__ == "__main__":
    main()
