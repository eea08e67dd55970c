"""Engine-level checks: torch backend vs ONNX Runtime CPU, images/s per batch, two streams vs
one."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from services.common.config import EngineConfig
from services.common.engines import Engine, create_engine
from services.common.repository import ModelEntry, load_entry
from tests.support import random_inputs
from tools.gpu_check.budget import Deadline
from tools.gpu_check.report import Section

# The CI tolerance (tests/test_engine_torch.py): max |torch - onnxruntime| <= 1e-3 of the output
# scale.
FP32_TOLERANCE = 1e-3
ACCURACY_BATCH = 3  # odd on purpose: with CUDA graphs it runs padded in bucket 4


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    precision: str
    graphs: bool

    def config(self, device: str, buckets: list[int] | None = None) -> EngineConfig:
        return EngineConfig(
            backend="torch",
            device=device,
            precision=self.precision,
            cuda_graphs=self.graphs,
            batch_buckets=list(buckets or []),
        )


ACCURACY_VARIANTS = (
    Variant("fp32", "fp32", False),
    Variant("fp32+graphs", "fp32", True),
    Variant("fp16", "fp16", False),
    Variant("fp16+graphs", "fp16", True),
)
SPEED_VARIANTS = (
    Variant("fp32", "fp32", False),
    Variant("fp16", "fp16", False),
    Variant("fp16+graphs", "fp16", True),
)


def graphs_captured(engine: Engine) -> bool:
    return getattr(engine, "_graphs", None) is not None


def worst_scaled_error(
    got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> tuple[float, str]:
    """Largest ``max|got - expected| / max(max|expected|, 1)`` over the outputs, and a shape/dtype
    problem if any."""
    worst, problem = 0.0, ""
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.shape != want.shape or have.dtype != want.dtype:
            shape = None if have is None else (have.shape, str(have.dtype))
            problem += f"{name}: got {shape}, want {(want.shape, str(want.dtype))}; "
            continue
        scale = max(float(np.abs(want).max()), 1.0)
        worst = max(worst, float(np.abs(have - want).max()) / scale)
    return worst, problem


def check_accuracy(models: list[str], device: str, deadline: Deadline, sec: Section) -> None:
    rows: list[dict[str, Any]] = []
    sec.tables["torch on the device vs onnxruntime CPU (same inputs)"] = rows
    for model in models:
        if deadline.passed():
            sec.status = "partial"
            sec.notes.append(f"time budget reached before {model}")
            return
        entry = load_entry(model)
        reference = create_engine(entry, EngineConfig())
        feeds = random_inputs(reference, ACCURACY_BATCH, seed=1)
        expected = reference.infer(feeds)
        reference.close()
        for variant in ACCURACY_VARIANTS:
            if deadline.passed():
                sec.status = "partial"
                sec.notes.append(f"time budget reached at {model} {variant.label}")
                return
            row: dict[str, Any] = {"model": model, "asked": variant.label}
            rows.append(row)
            try:
                engine = create_engine(entry, variant.config(device))
                got = engine.infer(feeds)
                ran = getattr(engine, "precision", variant.precision)
                error, problem = worst_scaled_error(got, expected)
                tolerance = FP32_TOLERANCE if ran == "fp32" else engine.config.fp16_tolerance
                row |= {
                    "ran": ran + ("+graphs" if graphs_captured(engine) else ""),
                    "max err / scale": error,
                    "tolerance": tolerance,
                    "pass": not problem and error <= tolerance,
                }
                if problem:
                    row["problem"] = problem
                engine.close()
            except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
                row |= {"pass": False, "problem": f"{exc.__class__.__name__}: {exc}"[:300]}
            if not row["pass"]:
                sec.status = "failed"
                if variant.precision == "fp32" and tf32_enabled(device):
                    rows.append(fp32_without_tf32(entry, variant, device, feeds, expected))
    check_fp16_fallback(models[0], device, sec)


def tf32_enabled(device: str) -> bool:
    import torch

    return device.startswith("cuda") and bool(torch.backends.cudnn.allow_tf32)


def fp32_without_tf32(
    entry: ModelEntry,
    variant: Variant,
    device: str,
    feeds: dict[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The same fp32 check with cuDNN's TF32 convolutions off: tells TF32 rounding from a real
    error."""
    import torch

    row: dict[str, Any] = {"model": entry.name, "asked": variant.label + ", TF32 off"}
    torch.backends.cudnn.allow_tf32 = False
    try:
        engine = create_engine(entry, variant.config(device))
        error, problem = worst_scaled_error(engine.infer(feeds), expected)
        engine.close()
        row |= {"ran": "fp32", "max err / scale": error, "tolerance": FP32_TOLERANCE}
        row["pass"] = not problem and error <= FP32_TOLERANCE
    except Exception as exc:  # noqa: BLE001
        row |= {"pass": False, "problem": f"{exc.__class__.__name__}: {exc}"[:300]}
    finally:
        torch.backends.cudnn.allow_tf32 = True
    return row


def check_fp16_fallback(model: str, device: str, sec: Section) -> None:
    """A probe tolerance nothing can meet must leave the engine on fp32 (the fallback path)."""
    config = dataclasses.replace(
        Variant("fp16", "fp16", False).config(device), fp16_tolerance=1e-12
    )
    engine = create_engine(load_entry(model), config)
    ran = getattr(engine, "precision", "?")
    sec.values[f"{model}: fp16 with an unmeetable probe tolerance ran"] = ran
    if ran != "fp32":
        sec.status = "failed"
    engine.close()


def timed_rate(call: Callable[[], object], items: int, seconds: float, warmup: int = 2) -> float:
    """Items per second of ``call`` repeated for about ``seconds`` (at least 3 calls)."""
    for _ in range(warmup):
        call()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls * items / (time.perf_counter() - start)


def measure_throughput(
    models: list[str],
    device: str,
    batches: list[int],
    point_s: float,
    deadline: Deadline,
    sec: Section,
) -> None:
    rows: list[dict[str, Any]] = []
    best: list[dict[str, Any]] = []
    sec.tables["images/s per batch (Engine.infer: host arrays in and out)"] = rows
    sec.tables["best images/s per model"] = best
    sec.notes.append(
        f"each point runs about {point_s:.2f} s after 2 warm-up calls; random inputs; "
        f"max_batch_size lifted to {max(batches)} so every batch size is served; "
        f"graph buckets = {batches}"
    )
    for model in models:
        entry = dataclasses.replace(load_entry(model), max_batch_size=max(batches))
        top: dict[str, Any] = {"model": model, "images/s": 0.0}
        for variant in SPEED_VARIANTS:
            if deadline.passed():
                sec.status = "partial"
                sec.notes.append(f"time budget reached at {model} {variant.label}")
                best.append(top)
                return
            try:
                engine = create_engine(entry, variant.config(device, batches))
            except Exception as exc:  # noqa: BLE001
                rows.append({"model": model, "variant": variant.label, "error": str(exc)[:300]})
                sec.status = "failed"
                continue
            ran = getattr(engine, "precision", variant.precision) + (
                "+graphs" if graphs_captured(engine) else ""
            )
            for batch in batches:
                if deadline.passed():
                    break
                row: dict[str, Any] = {"model": model, "variant": variant.label, "ran": ran}
                row["batch"] = batch
                try:
                    feeds = random_inputs(engine, batch)
                    rate = timed_rate(functools.partial(engine.infer, feeds), batch, point_s)
                    row["images/s"] = round(rate, 1)
                    if rate > top["images/s"]:
                        top = {"model": model, "images/s": round(rate, 1), "at": f"{ran} b{batch}"}
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the largest batch
                    row["error"] = f"{exc.__class__.__name__}: {exc}"[:200]
                    _release_cuda()
                rows.append(row)
            engine.close()
        best.append(top)


def _release_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_streams(model: str, device: str, batch: int, seconds: float, sec: Section) -> None:
    """One engine instance looping vs two instances (own streams) looping in two threads."""
    entry = load_entry(model)
    rows: list[dict[str, Any]] = []
    sec.tables[f"{model}, batch {batch}: two instances on two streams vs one"] = rows
    for variant in (Variant("fp16", "fp16", False), Variant("fp16+graphs", "fp16", True)):
        engines = [create_engine(entry, variant.config(device, [batch])) for _ in range(2)]
        feeds = random_inputs(engines[0], batch)
        one = timed_rate(functools.partial(engines[0].infer, feeds), batch, seconds)
        two = _concurrent_rate(engines, feeds, batch, seconds)
        rows.append(
            {
                "variant": variant.label,
                "one instance images/s": round(one, 1),
                "two instances images/s": round(two, 1),
                "concurrency ratio": round(two / one, 3),
            }
        )
        for engine in engines:
            engine.close()


def _concurrent_rate(
    engines: list[Engine], feeds: dict[str, np.ndarray], batch: int, seconds: float
) -> float:
    for engine in engines:
        engine.infer(feeds)
    counts = [0] * len(engines)
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            engines[i].infer(feeds)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(engines))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) * batch / (time.perf_counter() - start)
