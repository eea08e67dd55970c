"""GPU engine benchmark: torch-CUDA fp32 vs fp16 vs fp16 + CUDA graphs, and per-instance streams.

    .venv/bin/python -m bench.bench_gpu [--models a,b] [--batches 1,8,32,128] [--rounds 20]
    [--write]
    .venv/bin/python -m bench.bench_gpu --mode cpu [--write]    # torch backend vs onnxruntime on
    CPU

GPU mode (needs CUDA; exits with a message otherwise), in one run:
1. every repository model at batch 1, 8, 32, 128 (up to its max batch) through
   ``Engine.infer`` (host arrays in, host arrays out -- what the batcher sees)
   on torch-CUDA fp32, fp16, and fp16 with CUDA graphs; interleaved rounds,
   medians, ratios against fp32;
2. two engine instances of one model on one GPU, each on its own stream:
   the same batches run back to back (one thread) vs concurrently (two
   threads, as two batcher workers would), wall time and ratio.

CPU mode measures what a machine without a GPU can: the torch backend against
ONNX Runtime on the same batches. ``--write`` puts the figures into the
"GPU engines" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.common import machine
from bench.harness import Report
from services.common.config import EngineConfig
from services.common.engines import create_engine
from services.common.engines.base import Engine
from services.common.repository import load_entry
from tests.support import random_inputs, repository_models

SECTION = "GPU engines"
NOT_MEASURED = (
    "**GPU figures: NOT YET MEASURED.** No GPU was lent to the session that built these engines, "
    "so nothing below was measured on CUDA and no GPU number is estimated. On a GPU machine run "
    "`.venv/bin/python -m bench.bench_gpu --mode both --write` to fill this section."
)


@dataclass(frozen=True)
class Variant:
    label: str
    config: EngineConfig


# Each side of a round repeats its call for at least this long (one call is too short to time).
MIN_ROUND_S = 0.05


def interleaved_rounds(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call, round by round; the variants take turns each round so drift hits all
    alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            n, start = 0, time.perf_counter()
            while True:
                call()
                n += 1
                took = time.perf_counter() - start
                if took >= MIN_ROUND_S:
                    break
            samples[label].append(took / n)
    return samples


def medians_checked(
    report: Report, what: str, samples: dict[str, list[float]], base: str
) -> dict[str, float]:
    """Medians of the rounds; every variant's per-round speed against ``base`` must agree."""
    for label, values in samples.items():
        if label != base:
            ratios = [b / v for b, v in zip(samples[base], values, strict=True)]
            report.check_spread(f"{what}: {label} vs {base}", ratios)
    return {k: statistics.median(v) for k, v in samples.items()}


def batch_table(
    report: Report, models: list[str], batches: list[int], variants: list[Variant], rounds: int
) -> str:
    base = variants[0].label
    header = (
        "| model | batch | "
        + " | ".join(f"{v.label} ms/batch (img/s)" for v in variants)
        + " | "
        + " | ".join(f"{v.label} speed vs {base}" for v in variants[1:])
        + " |"
    )
    lines = [header, "|" + "---|" * (2 + 2 * len(variants) - 1)]
    for name in models:
        entry = load_entry(name)
        engines = {v.label: create_engine(entry, v.config) for v in variants}
        first = next(iter(engines.values()))
        for batch in batches:
            if entry.max_batch_size and batch > entry.max_batch_size:
                continue
            feeds = random_inputs(first, batch)
            samples = interleaved_rounds(
                {label: functools.partial(e.infer, feeds) for label, e in engines.items()}, rounds
            )
            medians = medians_checked(report, f"{name} batch {batch}", samples, base)
            cells = [
                f"{medians[v.label] * 1e3:.2f} ({batch / medians[v.label]:.0f})" for v in variants
            ]
            ratios = [f"{medians[base] / medians[v.label]:.2f}x" for v in variants[1:]]
            lines.append(
                f"| {name} | {batch} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |"
            )
            print(lines[-1], flush=True)
        for engine in engines.values():
            engine.close()
    return "\n".join(lines)


def streams_table(
    report: Report, model: str, config: EngineConfig, batch: int, batches_each: int, rounds: int
) -> str:
    entry = load_entry(model)
    engines = [create_engine(entry, config), create_engine(entry, config)]
    feeds = random_inputs(engines[0], batch)

    def run_many(engine: Engine) -> None:
        for _ in range(batches_each):
            engine.infer(feeds)

    def back_to_back() -> None:
        for engine in engines:
            run_many(engine)

    def concurrent() -> None:
        threads = [threading.Thread(target=run_many, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    samples = interleaved_rounds(
        {"back to back": back_to_back, "concurrent": concurrent}, rounds, warmup=1
    )
    medians = medians_checked(report, "two instances", samples, "back to back")
    images = 2 * batches_each * batch
    lines = [
        "| two instances, own streams | wall ms | img/s |",
        "|---|---:|---:|",
        *(f"| {label} | {s * 1e3:.1f} | {images / s:.0f} |" for label, s in medians.items()),
        "| **concurrent / back to back throughput** | | "
        f"**{medians['back to back'] / medians['concurrent']:.2f}x** |",
    ]
    for engine in engines:
        engine.close()
    return (
        f"{model}, {config.precision}, batch {batch}, {batches_each} batches per instance:\n\n"
        + "\n".join(lines)
    )


def gpu_section(report: Report, args: argparse.Namespace) -> str:
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: no CUDA device here (torch.cuda.is_available() is False); run "
            "it on a GPU machine, or use --mode cpu"
        )
    device = args.device
    variants = [
        Variant("fp32", EngineConfig(backend="torch", device=device)),
        Variant("fp16", EngineConfig(backend="torch", device=device, precision="fp16")),
        Variant(
            "fp16+graphs",
            EngineConfig(backend="torch", device=device, precision="fp16", cuda_graphs=True),
        ),
    ]
    table = batch_table(report, args.models, args.batches, variants, args.rounds)
    streams = streams_table(
        report,
        args.stream_model,
        EngineConfig(backend="torch", device=device, precision="fp16"),
        32,
        8,
        max(3, args.rounds // 4),
    )
    gpu = torch.cuda.get_device_name(torch.device(device))
    return (
        f"GPU: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}. Host: {machine()}.\n"
        f"Per figure: median of {args.rounds} interleaved rounds (each side of a round repeats "
        f"its call for at least {MIN_ROUND_S * 1e3:.0f} ms) through "
        "`Engine.infer` (host arrays in and out, "
        "pinned staging, own stream); fp16 only where the probe kept it (see "
        "docs/gpu.md); random inputs.\n\n"
        f"{table}\n\n{streams}"
    )


def cpu_section(report: Report, args: argparse.Namespace) -> str:
    import torch

    variants = [
        Variant("onnxruntime", EngineConfig(threads=args.threads)),
        Variant("torch", EngineConfig(backend="torch", threads=args.threads)),
    ]
    table = batch_table(report, args.cpu_models, args.cpu_batches, variants, args.rounds)
    return (
        f"Torch backend vs ONNX Runtime on CPU (torch {torch.__version__}), "
        f"{args.threads} intra-op threads each, median of {args.rounds} interleaved "
        f"rounds (each side of a round repeats its call for at least {MIN_ROUND_S * 1e3:.0f} "
        "ms) through `Engine.infer`, random inputs; `speed vs` is throughput "
        "relative to ONNX Runtime. "
        "Both run the same repository ONNX; the torch backend exists for CUDA.\n\n"
        f"{table}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["gpu", "cpu", "both"], default="gpu")
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=None,
        help="GPU mode: models (default: every repository model)",
    )
    parser.add_argument(
        "--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8, 32, 128]
    )
    parser.add_argument("--stream-model", default="efficientnet_lite0")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument(
        "--cpu-models", type=lambda s: s.split(","), default=["efficientnet_lite0", "open_nsfw"]
    )
    parser.add_argument(
        "--cpu-batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--write", action="store_true", help="write the figures into docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    args.models = args.models or repository_models()
    report = Report("gpu-engines", SECTION)
    if argv is not None:
        report.command = shlex.join([".venv/bin/python", "-m", "bench.bench_gpu", *argv])
    report.add(
        "Engines: `services/common/engines/torch_backend.py`, `tensorrt_backend.py`; "
        "how to run them: docs/gpu.md."
    )
    if args.mode in ("gpu", "both"):
        report.add("### torch on CUDA\n\n" + gpu_section(report, args))
    else:
        report.add(NOT_MEASURED)
    if args.mode in ("cpu", "both"):
        report.add("### torch backend vs onnxruntime on CPU\n\n" + cpu_section(report, args))
    if args.write:
        sys.exit(0 if report.write() else 3)
    print(report.header() + "\n\n" + "\n\n".join(report.parts))


if __name__ == "__main__":
    main()
