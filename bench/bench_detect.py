"""Detection service benchmark: the service vs its own bare models, in alternating rounds.

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_detect [--seconds 3]
    [--rounds 5] [--concurrency 8]

On the same photos (campus walkway frame: 6 people, astronaut: 1, coffee: 0;
round robin), sides in turn within each round (bench/harness.py: per-round
ratios, no figures when the rounds disagree by more than the allowed spread):

* ``service``: the detection service in its own process (person detector and
  pose landmarks behind their dynamic batchers), ``--concurrency`` gRPC client
  tasks with raw pixels;
* ``bare``: the service's ``DetectPipeline`` code on bare ONNX Runtime sessions
  in this process (no batcher, no gRPC), the same number of concurrent calls,
  each session run in a worker thread as the service's engines are;
* ``service_1`` and ``bare_1``: the same two at one call in flight (latency).

Every side: 1 ONNX Runtime intra-op thread per model, pose keypoints for up to
the service's default number of people.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import skimage.data

from bench.bench_face import BareModel, Opener, Rate, in_process, over_grpc
from bench.harness import Goal, Ratio, Report, Side, alternate
from services.common.protos import rgb_to_image
from services.detect.config import DetectConfig
from services.detect.pipeline import DetectPipeline
from tests.test_detect_service import campus
from visionmesh.mesh import LocalMesh, ServiceProcess, free_port, stop_process, wait_healthy
from visionmesh.v1 import detect_pb2, detect_pb2_grpc


def photos() -> dict[str, np.ndarray]:
    return {
        "campus": campus(),
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
    }


def bare_pipeline(threads: int, cfg: DetectConfig) -> DetectPipeline:
    return DetectPipeline(
        BareModel(cfg.person.name, threads),  # type: ignore[arg-type]
        cfg.detector.nms_iou,
        pose_model=BareModel(cfg.pose_landmark.name, threads),  # type: ignore[arg-type]
        pose_config=cfg.pose,
    )


def service(address: str, requests: dict[int, detect_pb2.DetectObjectsRequest]) -> Opener:
    """DetectObjects calls; ``requests`` holds each photo's request, built once."""

    async def people(stub: detect_pb2_grpc.DetectionServiceStub, img: np.ndarray) -> int:
        return int((await stub.DetectObjects(requests[id(img)], timeout=300)).people_count)

    return over_grpc(address, detect_pb2_grpc.DetectionServiceStub, people)


def start(mesh: LocalMesh, threads: int, instances: int = 1) -> ServiceProcess:
    sets = [
        f"{m}.{setting}"
        for m in ("person", "pose_landmark")
        for setting in (f"engine.threads={threads}", f"batcher.instances={instances}")
    ]
    proc = mesh._spawn("detect", free_port(mesh.host), [a for s in sets for a in ("--set", s)])
    if not wait_healthy(proc, time.monotonic() + 120):
        raise RuntimeError(f"detect did not become healthy; see {proc.log_path}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--engine-threads", type=int, default=1)
    parser.add_argument(
        "--instances", type=int, default=os.cpu_count() or 1, help="engine instances per model"
    )
    args = parser.parse_args()

    report = Report("detection-service", "Detection service")
    named = photos()
    imgs = list(named.values())
    cfg = DetectConfig()
    rates = {n: Rate(imgs, args.seconds, c) for n, c in (("many", args.concurrency), ("one", 1))}
    mesh = LocalMesh(services=["detect"], engine_threads=None)
    # One engine instance per core: with one intra-op thread, one instance per model would
    # cap the service at one core per model, while the bare side's concurrent calls run each
    # session from several threads at once.
    proc = start(mesh, args.engine_threads, args.instances)
    try:
        bare = bare_pipeline(args.engine_threads, cfg)
        requests = {id(i): detect_pb2.DetectObjectsRequest(image=rgb_to_image(i)) for i in imgs}
        det = cfg.detector

        async def bare_call(img: np.ndarray) -> int:
            found = await bare.detect(
                img, det.min_score, det.max_detections, max_poses=cfg.pose.max_people
            )
            return int(sum(1 for label in found.labels if label == "person"))

        openers: dict[str, Opener] = {
            "service": service(proc.address, requests),
            "bare": in_process(bare_call),
        }

        async def people(opener: Opener) -> int:
            async with opener() as call:
                return sum([await call(img) for img in imgs])

        found = {k: asyncio.run(people(o)) for k, o in openers.items()}

        def measure(rate: str, key: str) -> Callable[[], float]:
            return lambda: asyncio.run(rates[rate].run(key, openers[key]))

        t = (
            f"{args.engine_threads} ORT intra-op thread per model; service: "
            f"{args.instances} engine instances per model"
        )
        c = f"{args.concurrency} concurrent calls (this process)"
        work = f"person detection, NMS, pose keypoints for up to {cfg.pose.max_people} people"
        rpc = "gRPC round trip with raw RGB, validation, "
        bare_label = "the same `DetectPipeline` on bare ORT sessions (no batcher, no gRPC)"
        sides = [
            Side("service", "detection service", t, c, rpc + work, measure("many", "service")),
            Side("bare", bare_label, t, c + ", each session run in a worker thread", work,
                 measure("many", "bare")),
            Side("service_1", "detection service, one call in flight", t, "1", rpc + work,
                 measure("one", "service")),
            Side("bare_1", bare_label + ", one call in flight", t, "1", work,
                 measure("one", "bare")),
        ]  # fmt: skip
        values = alternate(sides, args.rounds)
    finally:
        stop_process(proc)

    sizes = ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in named.items())
    report.add(
        f"{args.rounds} rounds of {args.seconds:g} s per side after a warm-up round, sides in "
        f"turn within each round; medians and per-round ratios. Photos {sizes}, round robin. "
        "People counted on the three photos: " + ", ".join(f"{k} {v}" for k, v in found.items())
        + "."
    )  # fmt: skip
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio(f"service / bare models at {args.concurrency} in flight", "service", "bare",
                  Goal(">=", 0.9)),
            Ratio("service / bare models, one call in flight", "service_1", "bare_1"),
        ],
    )  # fmt: skip
    p50 = {
        f"{rate} {key}": 1000 * statistics.median(lat)
        for rate, r in rates.items()
        for key, lat in r.latencies.items()
    }
    report.add(
        "Latency per call, median over all rounds: "
        f"service {p50['one service']:.0f} ms and bare {p50['one bare']:.0f} ms at one call in "
        f"flight; service {p50['many service']:.0f} ms and bare {p50['many bare']:.0f} ms at "
        f"{args.concurrency}."
    )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
