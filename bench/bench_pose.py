"""What pose keypoints add to a detection call: the bare landmark model per person crop, and the
service's latency with pose on vs off. Writes its section of docs/benchmarks.md ("pose").

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_pose [--rounds 5] [--calls 10]

Bare: ONNX Runtime on ``pose_landmark_full`` (1 intra-op thread), one 256 x 256 crop per run
and four per run. Service: the detection service in its own process, one client, one intra-op
thread per engine, the campus frame (6 people, the 4 largest get keypoints) and the astronaut
(1 person). Per round the sides run in turn (bare, pose on, pose off), ``--calls`` runs / calls
per photo each.
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

from bench.bench_face import BareModel
from bench.harness import Report
from services.common.net import free_port
from services.common.protos import rgb_to_image
from services.detect import pose
from tests.test_detect_service import campus
from visionmesh.mesh import LocalMesh, stop_process, wait_healthy
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


class Bare:
    """ms per crop of the bare model: one crop per run, and four per run."""

    def __init__(self) -> None:
        self.model = BareModel("pose_landmark_full", 1)
        crops = [
            pose.crop(skimage.data.astronaut(), pose.roi(np.array([3, 32, 373, 509], np.float32))),
            pose.crop(campus(), pose.roi(np.array([328, 369, 385, 514], np.float32))),
        ]
        self.one = np.stack(crops[:1]).transpose(0, 3, 1, 2).copy()
        self.four = np.stack(crops * 2).transpose(0, 3, 1, 2).copy()
        self.ms(1)

    def ms(self, runs: int) -> tuple[float, float]:
        out = []
        for x in (self.one, self.four):
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                self.model.session.run(None, {"images": x})
                times.append((time.perf_counter() - start) * 1000 / len(x))
            out.append(statistics.median(times))
        return out[0], out[1]


async def service_rounds(address: str, rounds: int, calls: int) -> list[dict[str, float]]:
    photos = {"campus": campus(), "astronaut": skimage.data.astronaut()}
    table = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = detect_pb2_grpc.DetectionServiceStub(channel)

        async def p50(img: np.ndarray, no_pose: bool) -> float:
            request = detect_pb2.DetectObjectsRequest(image=rgb_to_image(img), no_pose=no_pose)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                await stub.DetectObjects(request, timeout=60)
                times.append((time.perf_counter() - start) * 1000)
            return statistics.median(times)

        bare = Bare()
        for img in photos.values():  # warm-up
            await p50(img, False)
        for _ in range(rounds):
            row = {"load": os.getloadavg()[0]}
            row["bare 1"], row["bare 4"] = bare.ms(calls)
            for name, img in photos.items():
                row[f"{name} on"] = await p50(img, False)
                row[f"{name} off"] = await p50(img, True)
            table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    report = Report("pose", "Detection service: what pose keypoints cost")
    mesh = LocalMesh(services=["detect"], engine_threads=None)
    # One intra-op thread per engine, as `visionmesh up` sets on machines of up to 4 cores.
    sets = ["--set", "person.engine.threads=1", "--set", "pose_landmark.engine.threads=1"]
    proc = mesh._spawn("detect", free_port("127.0.0.1"), sets)
    try:
        if not wait_healthy(proc, time.monotonic() + 120):
            raise RuntimeError(f"detect did not become healthy; see {proc.log_path}")
        table = asyncio.run(service_rounds(proc.address, args.rounds, args.calls))
    finally:
        stop_process(proc)
    rows = [
        "| round | load avg | bare ms/crop, 1 | bare ms/crop, 4 | campus p50 pose on | off |"
        " astronaut p50 pose on | off |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ["bare 1", "bare 4", "campus on", "campus off", "astronaut on", "astronaut off"]
    for i, r in enumerate(table):
        cells = " | ".join(f"{r[k]:.0f}" for k in keys)
        rows.append(f"| {i + 1} | {r['load']:.1f} | {cells} |")
    med = {k: statistics.median(r[k] for r in table) for k in table[0]}
    rows.append(
        f"| median | {med['load']:.1f} | " + " | ".join(f"{med[k]:.0f}" for k in keys) + " |"
    )
    report.add(
        f"{args.rounds} rounds; per round the sides run in turn (bare model, then per photo pose "
        f"on and off), {args.calls} runs / calls each; figures in ms. Bare: ONNX Runtime on "
        "`pose_landmark_full`, 1 intra-op thread, one 256 x 256 crop per run and four per run. "
        "Service: the detection service in its own process, one client, one intra-op thread "
        "per engine; the campus frame (the 4 largest of 6 people get keypoints) and the "
        "astronaut (1 person)."
    )
    report.add("\n".join(rows))
    for name in ("campus", "astronaut"):
        ratios = [r[f"{name} on"] / r[f"{name} off"] for r in table]
        report.check_spread(f"{name}: p50 pose on / off", ratios)
        report.add(
            f"{name}: p50 with pose / without, median of the per-round ratios "
            f"{statistics.median(ratios):.2f} ({', '.join(f'{v:.2f}' for v in ratios)})."
        )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
