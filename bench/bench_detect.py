"""Detection service benchmark: the service vs its bare model, one run.

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_detect [--rounds 5] [--passes
    4] [--concurrency 8]

On the same photos (campus walkway frame: 6 people, astronaut: 1, coffee: 0),
round by round, each round running its sides in turn (A B C, A B C, ...):

A. the detection service in its own process at saturation (``--concurrency``
   gRPC clients, raw pixels, the batcher merging their 300 x 300 inputs);
B. the same service with one client (latency, p50);
C. the service's pipeline code on a bare ONNX Runtime session, one image at a time.

Figures: medians over rounds, per-round ratios, the load average of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import grpc
import numpy as np
import skimage.data

from bench.bench_face import BareModel, Run, measure
from bench.common import machine, write_section
from services.common.net import free_port
from services.common.protos import rgb_to_image
from services.detect.config import DetectConfig
from services.detect.pipeline import DetectPipeline
from tests.test_detect_service import campus
from visionmesh.mesh import LocalMesh, stop_process, wait_healthy
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


def photos() -> dict[str, np.ndarray]:
    return {
        "campus": campus(),
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
    }


async def rounds(
    address: str, imgs: list[np.ndarray], n_rounds: int, passes: int, concurrency: int, threads: int
) -> list[dict[str, Run | float]]:
    cfg = DetectConfig()
    bare = DetectPipeline(BareModel(cfg.person.name, threads), cfg.detector.nms_iou)  # type: ignore[arg-type]
    work = [img for _ in range(passes) for img in imgs]
    requests = {id(img): detect_pb2.DetectObjectsRequest(image=rgb_to_image(img)) for img in imgs}
    out: list[dict[str, Run | float]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = detect_pb2_grpc.DetectionServiceStub(channel)

        async def service(img: np.ndarray) -> int:
            return int((await stub.DetectObjects(requests[id(img)], timeout=60)).people_count)

        async def bare_call(img: np.ndarray) -> int:
            found = await bare.detect(img, cfg.detector.min_score, cfg.detector.max_detections)
            return len(found.scores)

        sides = {
            "saturated": (concurrency, service),
            "single": (1, service),
            "bare": (1, bare_call),
        }
        for conc, call in sides.values():
            await measure(imgs, conc, call)
        for _ in range(n_rounds):
            row: dict[str, Run | float] = {"load": os.getloadavg()[0]}
            for side, (conc, call) in sides.items():
                row[side] = await measure(work, conc, call)
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--engine-threads", type=int, default=1)
    args = parser.parse_args()
    named = photos()
    mesh = LocalMesh(services=["detect"], engine_threads=None)
    sets = ["--set", f"person.engine.threads={args.engine_threads}"]
    proc = mesh._spawn("detect", free_port("127.0.0.1"), sets)
    try:
        if not wait_healthy(proc, time.monotonic() + 120):
            raise RuntimeError(f"detect did not become healthy; see {proc.log_path}")
        table = asyncio.run(
            rounds(
                proc.address,
                list(named.values()),
                args.rounds,
                args.passes,
                args.concurrency,
                args.engine_threads,
            )
        )
    finally:
        stop_process(proc)

    def runs(side: str) -> list[Run]:
        return [r[side] for r in table]  # type: ignore[misc]

    sat, single, bare = runs("saturated"), runs("single"), runs("bare")
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    lines = [
        f"| round | load avg (1 min) | service, {args.concurrency} clients img/s | "
        "service, 1 client img/s | bare model img/s | saturated / bare |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(table):
        lines.append(
            f"| {i + 1} | {row['load']:.1f} | {sat[i].images_s:.1f} | "
            f"{single[i].images_s:.1f} | {bare[i].images_s:.1f} | "
            f"{sat[i].images_s / bare[i].images_s:.2f} |"
        )
    ratio = med([a.images_s / b.images_s for a, b in zip(sat, bare, strict=True)])
    sizes = ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in named.items())
    body = (
        "\n"
        "Command: `flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_detect "
        f"--rounds {args.rounds} --passes {args.passes} --concurrency {args.concurrency} "
        f"--engine-threads {args.engine_threads}`\n"
        f"Machine: {machine()}; load average per round below.\n"
        f"Work per side and round: photos {sizes}, {args.passes} passes = "
        f"{args.passes * len(named)} images\n"
        f"(people found per pass set: service {sat[0].faces}, bare {bare[0].faces}); sides "
        "run in turn inside\n"
        f"each round; {args.engine_threads} ONNX Runtime intra-op thread(s) on both sides.\n"
        "\n"
        f"{chr(10).join(lines)}\n"
        "\n"
        f"| median | service, {args.concurrency} clients (saturation) | service, 1 client | "
        "bare model, one image at a time |\n"
        "|---|---:|---:|---:|\n"
        f"| images/s | **{med([r.images_s for r in sat]):.1f}** | "
        f"{med([r.images_s for r in single]):.1f} | {med([r.images_s for r in bare]):.1f} "
        "|\n"
        f"| latency per image (p50) | {med([r.latency_ms for r in sat]):.0f} ms | "
        f"**{med([r.latency_ms for r in single]):.0f} ms** | "
        f"{med([r.latency_ms for r in bare]):.0f} ms |\n"
        "\n"
        f"Median of per-round ratios: **service at saturation / bare model = {ratio:.2f}**. "
        "The service\n"
        "figure includes gRPC, raw-pixel transfer and validation, the load generator on "
        "the same cores.\n"
    )
    print(body)
    write_section("Detection service", body)


if __name__ == "__main__":
    main()
