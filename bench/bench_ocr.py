"""OCR benchmark: our service vs rapidocr's own pipeline, same models, same images, one run.

    .venv/bin/python -m bench.bench_ocr [--rounds 5] [--threads N]   # throughput + latency
    .venv/bin/python -m bench.bench_ocr --accuracy   # CER / line recall on the 300-line sets

Throughput: each rendered image (4 text lines, photo or plain background)
goes through the OCR service over gRPC (a real server in-process on
loopback; the client shares the CPU) and through ``rapidocr.RapidOCR``
called in-process, first one at a time, then ``--concurrency`` at a time
(rapidocr from that many threads). Both sides give every model the same ONNX
Runtime threads (``--threads``); sides alternate round by round
(bench/harness.py). Reports images/s, per-round ratios and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from bench.harness import Goal, Ratio, Report, Side, alternate
from services.common.protos import rgb_to_image
from services.common.repository import default_root
from services.ocr.config import HEAVY_STAGE_THREADS
from services.ocr.main import DEFINITION
from tests.support import running_service
from tools.ocr_accuracy import Prediction, Score, rapidocr_reference, score_image
from tools.ocr_render import RenderedImage, render_set
from visionmesh.models_build import build
from visionmesh.v1 import ocr_pb2, ocr_pb2_grpc

OCR_MODELS = ("ppocr_det", "ppocr_cls", "ppocr_rec")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def timed_run(
    images: list[RenderedImage],
    call: Callable[[RenderedImage], Awaitable[object]],
    concurrency: int,
) -> tuple[float, list[float]]:
    """Images/s and per-image latencies with ``concurrency`` calls in flight."""
    latencies: list[float] = []
    queue = list(images)

    async def worker() -> None:
        while queue:
            image = queue.pop()
            start = time.perf_counter()
            await call(image)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(images) / (time.perf_counter() - start), latencies


async def throughput(
    images: list[RenderedImage], concurrency: int, rounds: int, threads: int, seed: int
) -> None:
    report = Report("ocr", "OCR service vs rapidocr: throughput and latency")
    # The same ORT intra-op threads for every model on both sides.
    reference = rapidocr_reference(default_root(), threads=threads)
    pool = ThreadPoolExecutor(concurrency)
    loop = asyncio.get_running_loop()
    per_model = {"engine": {"threads": threads}}
    overrides = {"detector": per_model, "direction": per_model, "recognizer": per_model}
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        requests = {id(im): ocr_pb2.RecognizeRequest(image=rgb_to_image(im.rgb)) for im in images}

        async def ours(image: RenderedImage) -> object:
            return await stub.Recognize(requests[id(image)], timeout=300)

        async def theirs(image: RenderedImage) -> object:
            return await loop.run_in_executor(pool, reference, image.rgb)

        latencies: dict[str, list[list[float]]] = {}

        def side(
            key: str, call: Callable[[RenderedImage], Awaitable[object]], level: int
        ) -> Callable[[], float]:
            def measure() -> float:
                # The harness runs in a worker thread; the calls run on this event loop.
                rate, lat = asyncio.run_coroutine_threadsafe(
                    timed_run(images, call, level), loop
                ).result()
                latencies.setdefault(key, []).append(lat)
                return rate

            return measure

        t = f"{threads} ORT intra-op thread(s) per model (det, cls, rec)"
        sides = []
        for level in (1, concurrency):
            sides += [
                Side(f"ours_c{level}",
                     f"OCR service (gRPC, server in this process), {level} in flight", t,
                     f"{level} call(s) in flight",
                     "gRPC round trip, detection, direction, recognition",
                     side(f"ours_c{level}", ours, level)),
                Side(f"rapidocr_c{level}", f"rapidocr (in-process), {level} in flight", t,
                     f"{level} thread(s) calling it", "detection, direction, recognition",
                     side(f"rapidocr_c{level}", theirs, level)),
            ]  # fmt: skip
        values = await asyncio.to_thread(alternate, sides, rounds)
    pool.shutdown()
    report.add(
        f"Models: PP-OCRv6 det small + v2.0 mobile direction cls + PP-OCRv6 rec small (the files "
        f"inside `rapidocr==3.10.0`), both systems on ONNX Runtime CPU, same files, same threads. "
        f'Images: {len(images)} rendered "hard" images (4 lines each, photos/gradients, rotation, '
        f"noise, JPEG; seed {seed}), sent to the "
        f"service as raw RGB. {rounds} rounds after a warm-up round, sides in turn "
        "within each round; "
        "figures are images/s over the whole set."
    )
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio(f"service / rapidocr, {level} in flight", f"ours_c{level}", f"rapidocr_c{level}")
            for level in (1, concurrency)
        ],
    )
    rows = ["| side | p50 ms | p99 ms |", "|---|---:|---:|"]
    for s in sides:
        lat = [v for run in latencies[s.key][1:] for v in run]  # warm-up round left out
        rows.append(
            f"| {s.label} | {percentile(lat, 50) * 1e3:.0f} | {percentile(lat, 99) * 1e3:.0f} |"
        )
    report.add("Latency per image, over every measured round:\n\n" + "\n".join(rows))
    sys.exit(0 if report.write() else 3)


def cells(score: Score) -> str:
    return (
        f"{score.cer * 100:.2f} % ({score.edits}/{score.chars}) | "
        f"{score.line_recall * 100:.1f} % | "
        f"{score.line_accuracy * 100:.1f} %"
    )


async def accuracy(lines: int, seed: int) -> None:
    report = Report("ocr-accuracy", "OCR accuracy: rendered text, service vs rapidocr")
    reference = rapidocr_reference(default_root())
    scores: dict[str, tuple[Score, Score, int]] = {}
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        for hard in (False, True):
            images = render_set(lines, seed=seed, hard=hard)
            # a few in flight: crops share batches, deadlines stay realistic
            gate = asyncio.Semaphore(4)

            async def read(
                image: RenderedImage, gate: asyncio.Semaphore = gate
            ) -> ocr_pb2.RecognizeResponse:
                async with gate:
                    return await stub.Recognize(
                        ocr_pb2.RecognizeRequest(image=rgb_to_image(image.rgb)), timeout=300
                    )

            responses = await asyncio.gather(*(read(im) for im in images))
            ours, theirs = Score(), Score()
            for image, response in zip(images, responses, strict=True):
                quads = [
                    Prediction(
                        line.text, np.array([[p.x, p.y] for p in line.polygon.points], np.float32)
                    )
                    for line in response.lines
                ]
                score_image(image, quads, ours)
                score_image(image, await asyncio.to_thread(reference, image.rgb), theirs)
            label = "hard" if hard else "clean"
            print(f"{label}:\n  ocr service: {ours.summary()}\n  rapidocr:    {theirs.summary()}")
            scores[label] = (ours, theirs, len(images))
    report.add(
        f"Rendered sets (`tools/ocr_render.py`, seed {seed}, {lines} lines per set; scoring in "
        "`docs/ocr.md`). The models are PaddleOCR's, not trained here; rapidocr runs the same "
        "three ONNX files."
    )
    rows = [
        "| set | images | OCR service: CER | line recall | exact lines | rapidocr: "
        "CER | line recall | exact lines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (ours, theirs, n) in scores.items():
        rows.append(f"| {label} | {n} | {cells(ours)} | {cells(theirs)} |")
    report.add("\n".join(rows))
    sentences = [Goal("<=", 2.0).sentence("CER on the clean set (%)", scores["clean"][0].cer * 100)]
    for label, (ours, theirs, _) in scores.items():
        diff = ours.edits - theirs.edits
        if diff == 0:
            how = "the same number of character edits as"
        else:
            how = f"{abs(diff)} character edit(s) {'more' if diff > 0 else 'fewer'} than"
        sentences.append(f"On the {label} set the service made {how} rapidocr.")
    report.add(" ".join(sentences))
    report.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--accuracy", action="store_true", help="score CER / line recall instead of timing"
    )
    parser.add_argument("--lines", type=int, default=300, help="text lines per accuracy set")
    parser.add_argument("--images", type=int, default=12, help="images timed per throughput run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=HEAVY_STAGE_THREADS,
        help="ORT intra-op threads of every model, on both sides (default: the service's "
        "heavy-stage default)",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    build(only=OCR_MODELS)
    if args.accuracy:
        asyncio.run(accuracy(args.lines, args.seed))
    else:
        images = render_set(args.images * 4, seed=args.seed + 1, hard=True)
        asyncio.run(throughput(images, args.concurrency, args.rounds, args.threads, args.seed + 1))


if __name__ == "__main__":
    main()
