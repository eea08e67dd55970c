"""Side by side with Triton: the same work behind Triton Inference Server and behind our service.

    make setup-triton   # once: .venv-triton with PyTriton's tritonserver 2.51
    .venv/bin/python -m bench.bench_peers [--rounds 3] [--seconds 4] [--dry-run]

Same machine, same client process (this one, grpc.aio both ways), sides
alternating round by round (A B, then B A, ...), medians and per-round ratios:

1. classify: Triton's dynamic batcher (max batch 32, 2 ms delay, like the
   repository's policy) in front of a PyTriton callable running our classify
   pipeline (``bench/triton_peer.py``: our preprocessing functions,
   EfficientNet-Lite0 + open_nsfw + quality, the same ONNX files, 1 ORT thread
   per model) against our classify service (same models, same policy, 1 thread
   per model). Raw RGB pixels travel both ways. Images/s and p50/p99 latency at
   concurrency 1, 8 and 64 (64 = saturation).
2. the gateway's full analysis (every feature, cache off) against the sum of
   calling each service directly with the request the gateway would send.

The timed region is one client call: request serialisation, the round trip and
the reply's deserialisation (for Triton, the reply's tensors as numpy too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import skimage.data

from bench.common import machine, median, percentiles_ms, write_section
from services.common.metrics import free_port
from services.common.protos import rgb_to_image
from tests.conftest import encode
from visionmesh import features
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import (
    classify_pb2,
    classify_pb2_grpc,
    common_pb2,
    face_pb2,
    face_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
CONCURRENCY = (1, 8, 64)
Call = Callable[[], Awaitable[Any]]


@dataclass
class Phase:
    """One side at one concurrency for one round: completed calls and their latencies."""

    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0


async def closed_loop(call: Call, concurrency: int, seconds: float) -> Phase:
    """``concurrency`` clients calling back to back for ``seconds``."""
    phase = Phase()
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await call()
            phase.latencies_s.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - start
    return phase


async def alternate(
    sides: dict[str, Call], concurrency: int, seconds: float, rounds: int
) -> dict[str, list[Phase]]:
    """Rounds of every side, the order flipped each round (A B, B A, ...) so drift hits both
    alike."""
    names = list(sides)
    out: dict[str, list[Phase]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(await closed_loop(sides[name], concurrency, seconds))
    return out


def summary(phases: list[Phase]) -> dict[str, float]:
    """Median over rounds of each round's rate and percentiles."""
    per_round = [percentiles_ms(p.latencies_s) for p in phases]
    return {
        "rate": median([p.rate for p in phases]),
        "p50": median([r["p50"] for r in per_round]),
        "p99": median([r["p99"] for r in per_round]),
    }


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


# --- Triton ---------------------------------------------------------------------------


class TritonProcess:
    """``bench/triton_peer.py`` under .venv-triton on free loopback ports."""

    def __init__(self, log: Path) -> None:
        if not TRITON_PYTHON.exists():
            raise SystemExit(f"{TRITON_PYTHON} is missing: run `make setup-triton` first")
        self.grpc_port, self.http_port, self.metrics_port = (free_port() for _ in range(3))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.setdefault("VISIONMESH_MODEL_REPOSITORY", str(ROOT / "model_repository"))
        self.log = log
        self.proc = subprocess.Popen(
            [
                str(TRITON_PYTHON),
                "-m",
                "bench.triton_peer",
                f"--grpc-port={self.grpc_port}",
                f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        import tritonclient.grpc.aio as triton_grpc

        client = triton_grpc.InferenceServerClient(self.address)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Triton exited:\n{self.log.read_text()[-3000:]}")
                try:
                    if await client.is_model_ready("classify") and await client.is_model_ready(
                        "face"
                    ):
                        return
                except Exception:  # not listening yet
                    pass
                await asyncio.sleep(1.0)
            raise RuntimeError(f"Triton not ready in {timeout_s:.0f} s")
        finally:
            await client.close()

    def batch_counts(self, model: str) -> tuple[int, int]:
        """(inferences, executions) of ``model`` so far: their ratio is Triton's mean batch size."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        counts = {}
        for name in ("nv_inference_count", "nv_inference_exec_count"):
            m = re.search(rf'^{name}{{model="{model}"[^}}]*}} (\S+)$', text.decode(), re.M)
            counts[name] = int(float(m.group(1))) if m else 0
        return counts["nv_inference_count"], counts["nv_inference_exec_count"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- classify: Triton vs our service ----------------------------------------------------


async def compare(
    triton: TritonProcess,
    model: str,
    sides: dict[str, Call],
    concurrency: list[int],
    args: argparse.Namespace,
) -> tuple[dict[int, dict[str, list[Phase]]], dict[int, float]]:
    """Per concurrency, each side's rounds; and Triton's mean batch size at that concurrency."""
    results: dict[int, dict[str, list[Phase]]] = {}
    batch_means: dict[int, float] = {}
    for c in concurrency:
        before = triton.batch_counts(model)
        results[c] = await alternate(sides, c, args.seconds, args.rounds)
        after = triton.batch_counts(model)
        done, execs = after[0] - before[0], after[1] - before[1]
        batch_means[c] = done / execs if execs else 0.0
    return results, batch_means


async def face_side_by_side(
    triton: TritonProcess, ours: str, rgb: np.ndarray, args: argparse.Namespace
) -> tuple[dict[int, dict[str, list[Phase]]], dict[int, float]]:
    import tritonclient.grpc.aio as triton_grpc

    batch = rgb[None]
    tclient = triton_grpc.InferenceServerClient(triton.address)
    request = face_pb2.DetectRequest(image=rgb_to_image(rgb))

    async def via_triton() -> Any:
        inp = triton_grpc.InferInput("image", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        result = await tclient.infer("face", [inp], client_timeout=120)
        return face_pb2.DetectResponse.FromString(result.as_numpy("reply")[0][0])

    async with grpc.aio.insecure_channel(ours) as channel:
        stub = face_pb2_grpc.FaceServiceStub(channel)

        async def via_ours() -> Any:
            return await stub.Detect(request, timeout=120)

        for _ in range(2):
            theirs, reply = await via_triton(), await via_ours()
        if len(theirs.faces) != len(reply.faces) or [t.name for t in theirs.tags] != [
            t.name for t in reply.tags
        ]:
            raise RuntimeError(f"sides disagree: Triton {theirs.tags} vs ours {reply.tags}")
        out = await compare(
            triton, "face", {"triton": via_triton, "ours": via_ours}, args.face_concurrency, args
        )
    await tclient.close()
    return out


async def classify_side_by_side(
    triton: TritonProcess, ours: str, rgb: np.ndarray, args: argparse.Namespace
) -> tuple[dict[int, dict[str, list[Phase]]], dict[int, float]]:
    """Per concurrency, each side's rounds; and Triton's mean batch size at that concurrency."""
    import tritonclient.grpc.aio as triton_grpc

    batch = rgb[None]
    tclient = triton_grpc.InferenceServerClient(triton.address)
    request = classify_pb2.ClassifyRequest(image=rgb_to_image(rgb))

    async def via_triton() -> Any:
        inp = triton_grpc.InferInput("image", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        result = await tclient.infer("classify", [inp], client_timeout=60)
        return result.as_numpy("top_index"), result.as_numpy("nsfw_score")

    async with grpc.aio.insecure_channel(ours) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)

        async def via_ours() -> Any:
            return await stub.Classify(request, timeout=60)

        # Warm-up, and the same answer from both (the same pipeline on the same pixels).
        for _ in range(3):
            top, nsfw = await via_triton()
            reply = await via_ours()
        ours_top = [label.class_index for label in reply.labels]
        if list(top[0]) != ours_top or abs(float(nsfw[0][0]) - reply.safety.nsfw_score) > 1e-3:
            raise RuntimeError(
                f"sides disagree: Triton {list(top[0])} {nsfw} vs ours {ours_top} "
                f"{reply.safety.nsfw_score}"
            )
        results, batch_means = await compare(
            triton, "classify", {"triton": via_triton, "ours": via_ours}, args.concurrency, args
        )
    await tclient.close()
    return results, batch_means


def side_table(results: dict[int, dict[str, list[Phase]]], batch_means: dict[int, float]) -> str:
    rows = [
        "| concurrency | Triton images/s | ours images/s | **ours / Triton** "
        "(per-round ratios) | Triton p50 / p99 ms | ours p50 / p99 ms | Triton mean "
        "batch |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for c, sides in results.items():
        t, o = summary(sides["triton"]), summary(sides["ours"])
        ratios = [b.rate / a.rate for a, b in zip(sides["triton"], sides["ours"], strict=True)]
        rows.append(
            f"| {c} | {t['rate']:.1f} | {o['rate']:.1f} | **{o['rate'] / t['rate']:.2f}** "
            f"({', '.join(f'{r:.2f}' for r in ratios)}) | {t['p50']:.1f} / {t['p99']:.1f} | "
            f"{o['p50']:.1f} / {o['p99']:.1f} | {batch_means[c]:.1f} |"
        )
    return "\n".join(rows)


# --- gateway full analysis vs the sum of direct calls -----------------------------------


async def gateway_vs_direct(
    mesh: LocalMesh, gateway: str, photo: bytes, rounds: int, calls: int
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Per round: median gateway Analyze (all features) and median sum of the four direct calls."""
    options = gateway_pb2.AnalyzeOptions(no_cache=True)
    image = common_pb2.Image(encoded=photo)
    gw_req = gateway_pb2.AnalyzeRequest(image=image, options=options)
    specs = list(features.all_features())
    channels = {
        s.service: grpc.aio.insecure_channel(mesh.processes[s.service].address) for s in specs
    }
    gch = grpc.aio.insecure_channel(gateway)
    gw = gateway_pb2_grpc.GatewayServiceStub(gch)
    direct = [
        (s.enum_name, getattr(s.stub(channels[s.service]), s.method), s.request([image], options))
        for s in specs
    ]

    async def one_gateway() -> float:
        t = time.perf_counter()
        reply = await gw.Analyze(gw_req, timeout=120)
        took = time.perf_counter() - t
        if reply.errors:
            raise RuntimeError(f"gateway errors: {reply.errors}")
        return took

    per_service: dict[str, list[float]] = {name: [] for name, _, _ in direct}

    async def one_direct_sum() -> float:
        total = 0.0
        for name, method, request in direct:
            t = time.perf_counter()
            await method(request, timeout=120)
            took = time.perf_counter() - t
            per_service[name].append(took)
            total += took
        return total

    await one_gateway()
    await one_direct_sum()
    gw_rounds, direct_rounds = [], []
    for r in range(rounds):
        order = [("gw", one_gateway), ("direct", one_direct_sum)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            samples = [await fn() for _ in range(calls)]
            (gw_rounds if name == "gw" else direct_rounds).append(median(samples))
    await gch.close()
    for ch in channels.values():
        await ch.close()
    return gw_rounds, direct_rounds, per_service


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--face-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--gateway-calls", type=int, default=5)
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument(
        "--dry-run", action="store_true", help="print only; leave docs/benchmarks.md"
    )
    args = parser.parse_args()

    load_before = load_average()
    rgb = np.ascontiguousarray(skimage.data.chelsea())
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-peers-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    triton = TritonProcess(work / "triton.log")
    mesh = LocalMesh(services=["classify", "face"], log_dir=work / "mesh-peers")
    face_rgb = np.ascontiguousarray(skimage.data.astronaut())
    try:
        mesh.start()
        asyncio.run(triton.wait_ready())
        classify, batch_means = asyncio.run(
            classify_side_by_side(triton, mesh.processes["classify"].address, rgb, args)
        )
        face, face_batches = asyncio.run(
            face_side_by_side(triton, mesh.processes["face"].address, face_rgb, args)
        )
    finally:
        triton.stop()
        mesh.stop()
    classify_rows = side_table(classify, batch_means)
    face_rows = side_table(face, face_batches)
    print(classify_rows, face_rows, sep="\n\n", flush=True)

    gateway_rows = ""
    if not args.skip_gateway:
        from PIL import Image

        photo = encode(np.asarray(Image.fromarray(skimage.data.astronaut())))
        full = LocalMesh(
            log_dir=work / "mesh-full",
            extra_args={"hash": ["--set", f"storage.data_dir={work / 'hash'}"]},
        )
        try:
            address = full.start()
            gw_rounds, direct_rounds, per_service = asyncio.run(
                gateway_vs_direct(full, address, photo, args.rounds, args.gateway_calls)
            )
        finally:
            full.stop()
        g, d = median(gw_rounds) * 1000, median(direct_rounds) * 1000
        each = ", ".join(f"{n} {median(v) * 1000:.0f}" for n, v in per_service.items())
        gateway_rows = (
            "\n"
            "| what (astronaut 512x512 JPEG, every feature, cache off) | median of round "
            "medians | rounds (ms) |\n"
            "|---|---:|---|\n"
            f"| gateway `Analyze`, all features (fanned out concurrently) | {g:.0f} ms | "
            f"{', '.join(f'{x * 1000:.0f}' for x in gw_rounds)} |\n"
            f"| sum of calling each service directly, one after the other ({each} ms) | "
            f"{d:.0f} ms | {', '.join(f'{x * 1000:.0f}' for x in direct_rounds)} |\n"
            f"| **gateway / sum of direct calls** | **{g / d:.2f}** | "
            f"{', '.join(f'{a / b:.2f}' for a, b in zip(gw_rounds, direct_rounds, strict=True))} "
            "|\n"
        )
        print(gateway_rows, flush=True)

    body = (
        "\n"
        "Command: `make setup-triton && .venv/bin/python -m bench.bench_peers --rounds "
        f"{args.rounds} --seconds {args.seconds:g}`\n"
        f"Machine: {machine()}; load average {load_before} before, {load_average()} after.\n"
        "Triton: tritonserver 2.51 from `nvidia-pytriton==0.7.0` (Python backend), in "
        "`.venv-triton`; see docs/triton.md.\n"
        "\n"
        "### classify: Triton vs our classify service, same pipeline\n"
        "\n"
        f"{args.rounds} rounds of {args.seconds:g} s per side and concurrency, sides "
        "alternating (A B, B A, ...); medians of the rounds.\n"
        "Both sides: our preprocessing functions, EfficientNet-Lite0 + open_nsfw + quality "
        "on the repository's ONNX files,\n"
        "1 ONNX Runtime intra-op thread per model, dynamic batching max 32 / 2 ms; chelsea "
        "(451x300) as raw RGB.\n"
        "\n"
        f"{classify_rows}\n"
        "\n"
        "### face: Triton vs our face service, same pipeline\n"
        "\n"
        "Both sides: the face service's `FacePipeline` (detection, alignment, age, gender, "
        "emotion, pose, quality) and its tags\n"
        "on the repository's ONNX files, 1 ORT thread per model; Triton batches requests "
        "(max 8, 2 ms) and runs the pipeline on\n"
        "each image of the batch, our service's batchers merge model rows across calls. "
        "astronaut (512x512, one face) as raw RGB.\n"
        "\n"
        f"{face_rows}\n"
        "\n"
        "### The gateway against calling the services directly\n"
        f"{gateway_rows if gateway_rows else '(not run: --skip-gateway)'}\n"
        "What differs between the sides is the serving layer only. Triton hands each\n"
        "batch to one Python callable (PyTriton's proxy: shared memory and ZeroMQ\n"
        "between tritonserver's Python backend and the callable's process), which runs\n"
        "the preprocessing of the batch's images one after another and then the models;\n"
        "our service preprocesses each image in worker threads while the models of\n"
        "earlier images compute, and batches per model (for face: detector rows and\n"
        "each attribute head's rows across calls). The timed region is one client\n"
        "call, request building to parsed reply; see docs/triton.md.\n"
    )
    print(body)
    if not args.dry_run:
        write_section("Side by side with Triton", body, key="peers")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
