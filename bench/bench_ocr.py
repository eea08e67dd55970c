"""OCR benchmark: our service vs rapidocr's own pipeline, same models, same images, one run.

    .venv/bin/python -m bench.bench_ocr              # throughput + latency, service defaults (a minute or two)
    .venv/bin/python -m bench.bench_ocr --engine-threads 0   # ... with ORT's library-default threads
    .venv/bin/python -m bench.bench_ocr --accuracy   # CER / line recall on the 300-line sets

Throughput: each rendered image (4 text lines, photo or plain background)
goes through the OCR service over gRPC (a real server in-process on
loopback; the client shares the CPU) and through ``rapidocr.RapidOCR``
called in-process, first one at a time, then ``--concurrency`` at a time
(rapidocr from that many threads). Reports images/s and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from services.common.protos import rgb_to_image
from services.common.repository import default_root
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


def report(name: str, rate: float, latencies: list[float]) -> dict[str, float]:
    row = {
        "images_s": rate,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }
    print(
        f"  {name:<28} {row['images_s']:7.2f} img/s   p50 {row['p50_ms']:7.1f} ms   p99 {row['p99_ms']:7.1f} ms"
    )
    return row


async def throughput(
    images: list[RenderedImage], concurrency: int, rounds: int, engine_threads: int | None
) -> None:
    reference = rapidocr_reference(default_root())
    pool = ThreadPoolExecutor(concurrency)
    loop = asyncio.get_running_loop()
    # ORT intra-op threads per model: None = the service's defaults (services/ocr/config.py),
    # 0 = library default (as rapidocr's own sessions use), N = N for every model.
    threads = {"engine": {"threads": engine_threads}}
    overrides = (
        {}
        if engine_threads is None
        else {"detector": threads, "direction": threads, "recognizer": threads}
    )
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        requests = {id(im): ocr_pb2.RecognizeRequest(image=rgb_to_image(im.rgb)) for im in images}

        async def ours(image: RenderedImage) -> object:
            return await stub.Recognize(requests[id(image)], timeout=120)

        async def theirs(image: RenderedImage) -> object:
            return await loop.run_in_executor(pool, reference, image.rgb)

        # Warm-up: first calls pay for session set-up and memory arenas.
        for image in images[:2]:
            await ours(image)
            await theirs(image)
        # Rounds alternate the two systems so drifting load on a shared machine hits both alike.
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_no in range(rounds):
            for level in (1, concurrency):
                print(f"round {round_no + 1}, concurrency {level}, {len(images)} images:")
                runs.setdefault(("ours", level), []).append(
                    report("ocr service (gRPC)", *await timed_run(images, ours, level))
                )
                runs.setdefault(("rapidocr", level), []).append(
                    report("rapidocr (in-process)", *await timed_run(images, theirs, level))
                )
        print(f"medians over {rounds} rounds:")
        for level in (1, concurrency):
            a = {
                k: statistics.median(r[k] for r in runs[("ours", level)])
                for k in runs[("ours", level)][0]
            }
            b = {
                k: statistics.median(r[k] for r in runs[("rapidocr", level)])
                for k in runs[("rapidocr", level)][0]
            }
            print(
                f"  concurrency {level}: service {a['images_s']:.2f} img/s p50 {a['p50_ms']:.0f} ms p99 {a['p99_ms']:.0f} ms | "
                f"rapidocr {b['images_s']:.2f} img/s p50 {b['p50_ms']:.0f} ms p99 {b['p99_ms']:.0f} ms | "
                f"throughput x{a['images_s'] / b['images_s']:.2f}, p50 x{a['p50_ms'] / b['p50_ms']:.2f}"
            )
    pool.shutdown()


async def accuracy(lines: int, seed: int) -> None:
    reference = rapidocr_reference(default_root())
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        for hard in (False, True):
            images = render_set(lines, seed=seed, hard=hard)
            gate = asyncio.Semaphore(
                4
            )  # a few in flight: crops share batches, deadlines stay realistic

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
            print(
                f"{label} ({len(images)} images, {lines} lines):\n  ocr service: {ours.summary()}\n  rapidocr:    {theirs.summary()}"
            )
            for want, got in ours.errors[:5]:
                print(f"    ours misread {want!r} as {got!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--accuracy", action="store_true", help="score CER / line recall instead of timing"
    )
    parser.add_argument("--lines", type=int, default=300, help="text lines per accuracy set")
    parser.add_argument("--images", type=int, default=12, help="images timed per throughput run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        help="ORT intra-op threads for every OCR model (0 = library default; unset = the service's defaults)",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    build(only=OCR_MODELS)
    if args.accuracy:
        asyncio.run(accuracy(args.lines, args.seed))
    else:
        images = render_set(args.images * 4, seed=args.seed + 1, hard=True)
        asyncio.run(throughput(images, args.concurrency, args.rounds, args.engine_threads))


if __name__ == "__main__":
    main()
