"""Before/after of the serving-overhead changes, each side a live gateway, rounds alternating.

    .venv/bin/python -m bench.bench_overhead [--rounds 5] [--calls 40] [--video-runs 3] [--dry-run]

One mesh, two gateways on the same services: "before" runs with the previous
behaviour (``validation=decode``: the gateway decodes every image once more
before forwarding the bytes; ``video_batch_calls=false``: one call per frame
and service), "after" with header-only validation and, for videos,
``video_batch_calls=true`` (a clip's frames in one call per service). Rounds alternate the sides (A
B C, then
C B A, ...) so drift on a shared machine hits them alike.

1. Gateway overhead: ``Analyze`` (classify only, cache off) through each
   gateway vs calling the classify service directly, sequential calls;
   per-round p50s, their difference, medians of the rounds.
2. Video: ``AnalyzeVideo`` of a 10 s 1280x720 clip sampling 3 keyframes, all
   features, through each gateway, against ``Analyze`` of one 1280x720 photo.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import skimage.data
from PIL import Image

from bench.common import machine, median, percentiles_ms, write_section
from services.common.metrics import free_port
from tests.conftest import encode
from tools.make_sample_video import make_video
from visionmesh import client, features
from visionmesh.mesh import LocalMesh, ServiceProcess, stop_process, tail, wait_healthy
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BEFORE = ["--set", "validation=decode", "--set", "video_batch_calls=false"]


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def before_gateway(mesh: LocalMesh) -> ServiceProcess:
    """A second gateway on the mesh's services with the previous behaviour."""
    assert mesh.log_dir is not None
    port = free_port()
    log_path = mesh.log_dir / "gateway-before.log"
    cmd = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--config", str(mesh.log_dir / "gateway.yaml"), *BEFORE]
    popen = subprocess.Popen(
        cmd, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    proc = ServiceProcess("gateway-before", f"127.0.0.1:{port}", popen, log_path)
    if not wait_healthy(proc, time.monotonic() + 60):
        raise RuntimeError(f"before-gateway did not start:\n{tail(proc.log_path)}")
    return proc


def alternate(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    names = list(sides)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
    return out


def overhead(args: argparse.Namespace, work: Path) -> str:
    photo = encode(skimage.data.chelsea())
    mesh = LocalMesh(services=["classify"], log_dir=work / "overhead")
    try:
        after_address = mesh.start()
        before = before_gateway(mesh)
        direct_req = classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=photo))
        gw_req = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=photo),
            features=[common_pb2.FEATURE_CLASSIFY],
            options=gateway_pb2.AnalyzeOptions(no_cache=True),
        )
        with (
            grpc.insecure_channel(mesh.processes["classify"].address) as cch,
            grpc.insecure_channel(after_address) as ach,
            grpc.insecure_channel(before.address) as bch,
        ):
            direct = classify_pb2_grpc.ClassifyServiceStub(cch).Classify
            after = gateway_pb2_grpc.GatewayServiceStub(ach).Analyze
            before_call = gateway_pb2_grpc.GatewayServiceStub(bch).Analyze

            sides = {
                "direct": (direct, direct_req),
                "before": (before_call, gw_req),
                "after": (after, gw_req),
            }
            for call, req in sides.values():
                for _ in range(5):
                    call(req, timeout=60)
            # Call by call, the three sides back to back in a rotating order: a busy moment
            # on the machine lands on all three; each round's p50s come from its own calls.
            rounds: dict[str, list[float]] = {name: [] for name in sides}
            names = list(sides)
            for r in range(args.rounds):
                samples: dict[str, list[float]] = {name: [] for name in sides}
                for i in range(args.calls):
                    k = (r * args.calls + i) % len(names)
                    for name in names[k:] + names[:k]:
                        call, req = sides[name]
                        t = time.perf_counter()
                        call(req, timeout=60)
                        samples[name].append(time.perf_counter() - t)
                for name in sides:
                    rounds[name].append(percentiles_ms(samples[name])["p50"])
        stop_process(before)
    finally:
        mesh.stop()
    d, b, a = (median(rounds[k]) for k in ("direct", "before", "after"))
    over_b = [x - y for x, y in zip(rounds["before"], rounds["direct"], strict=True)]
    over_a = [x - y for x, y in zip(rounds["after"], rounds["direct"], strict=True)]
    fmt = ", ".join
    return (
        "\n"
        f"| classify only, chelsea JPEG (451x300, {len(photo) // 1024} KiB), cache off, "
        "sequential | p50, median of rounds | per-round p50 (ms) |\n"
        "|---|---:|---|\n"
        f"| classify service directly | {d:.2f} ms | "
        f"{fmt(f'{x:.2f}' for x in rounds['direct'])} |\n"
        "| gateway before (`validation=decode`: decode in the gateway, then forward the "
        f"bytes) | {b:.2f} ms | {fmt(f'{x:.2f}' for x in rounds['before'])} |\n"
        "| gateway after (`validation=header`: header checks, the service's decode "
        f"validates) | {a:.2f} ms | {fmt(f'{x:.2f}' for x in rounds['after'])} |\n"
        f"| **gateway overhead at p50, before** | **{median(over_b):.2f} ms** | "
        f"{fmt(f'{x:.2f}' for x in over_b)} |\n"
        f"| **gateway overhead at p50, after** (goal <= 2 ms) | **{median(over_a):.2f} ms** "
        f"| {fmt(f'{x:.2f}' for x in over_a)} |\n"
    )


def video(args: argparse.Namespace, work: Path) -> str:
    clip = make_video(work / "clip720.mp4", seconds=10, size=(1280, 720))
    photo = encode(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1280, 720))))
    options = gateway_pb2.AnalyzeOptions(no_cache=True)
    mesh = LocalMesh(
        log_dir=work / "video",
        extra_args={
            "hash": ["--set", f"storage.data_dir={work / 'hash'}"],
            "gateway": ["--set", "video_batch_calls=true"],
        },
    )
    try:
        after_address = mesh.start()
        before = before_gateway(mesh)
        with client.channel(after_address) as ach, client.channel(before.address) as bch:
            after = gateway_pb2_grpc.GatewayServiceStub(ach)
            before_stub = gateway_pb2_grpc.GatewayServiceStub(bch)
            image_req = gateway_pb2.AnalyzeRequest(
                image=common_pb2.Image(encoded=photo), options=options
            )

            def timed_video(stub: gateway_pb2_grpc.GatewayServiceStub) -> Callable[[], float]:
                def run() -> float:
                    header = gateway_pb2.VideoUploadHeader(options=options, num_frames=3)
                    t = time.perf_counter()
                    reply = stub.AnalyzeVideo(client.video_messages(clip, header), timeout=300)
                    took = time.perf_counter() - t
                    if reply.errors:
                        raise RuntimeError(f"video errors: {reply.errors}")
                    return took * 1000

                return run

            def timed_image() -> float:
                t = time.perf_counter()
                reply = after.Analyze(image_req, timeout=300)
                took = time.perf_counter() - t
                if reply.errors:
                    raise RuntimeError(f"image errors: {reply.errors}")
                return took * 1000

            timed_image()
            timed_video(after)()
            timed_video(before_stub)()
            rounds = alternate(
                {
                    "image": timed_image,
                    "before": timed_video(before_stub),
                    "after": timed_video(after),
                },
                args.video_runs,
            )
        stop_process(before)
    finally:
        mesh.stop()
    img, b, a = (median(rounds[k]) for k in ("image", "before", "after"))
    per_frame = [spec for spec in features.all_features() if spec.per_frame]
    batched = [spec.name for spec in per_frame if spec.batch_method]
    unbatched = [spec.name for spec in per_frame if not spec.batch_method]
    rb = [x / y for x, y in zip(rounds["before"], rounds["image"], strict=True)]
    ra = [x / y for x, y in zip(rounds["after"], rounds["image"], strict=True)]
    fmt = ", ".join
    return (
        "\n"
        "| every feature, cache off | median | rounds (ms) |\n"
        "|---|---:|---|\n"
        f"| `Analyze`, one 1280x720 photo | {img:.0f} ms | "
        f"{fmt(f'{x:.0f}' for x in rounds['image'])} |\n"
        "| `AnalyzeVideo`, 10 s 1280x720 clip, 3 keyframes, before (one call per frame and "
        f"service: {3 * len(per_frame)} calls) | {b:.0f} ms | "
        f"{fmt(f'{x:.0f}' for x in rounds['before'])} |\n"
        f"| `AnalyzeVideo`, same clip, after ({', '.join(batched)} take the 3 frames in one "
        f"call each; {', '.join(unbatched) or 'none'} per frame: "
        f"{len(batched) + 3 * len(unbatched)} calls) | {a:.0f} ms | "
        f"{fmt(f'{x:.0f}' for x in rounds['after'])} |\n"
        f"| **video / image, before** | **{median(rb):.2f}x** | "
        f"{fmt(f'{x:.2f}' for x in rb)} |\n"
        f"| **video / image, after** | **{median(ra):.2f}x** | "
        f"{fmt(f'{x:.2f}' for x in ra)} |\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--video-runs", type=int, default=3)
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument(
        "--dry-run", action="store_true", help="print only; leave docs/benchmarks.md"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    load_before = load_average()
    over = overhead(args, work)
    print(over, flush=True)
    vid = "" if args.skip_video else video(args, work)
    print(vid, flush=True)
    body = (
        "\n"
        f"Command: `.venv/bin/python -m bench.bench_overhead --rounds {args.rounds} --calls "
        f"{args.calls} --video-runs {args.video_runs}`\n"
        f"Machine: {machine()}; load average {load_before} before, {load_average()} after.\n"
        "Two gateways on the same services, before (`validation=decode`, "
        "`video_batch_calls=false`) and after (`validation=header`, "
        "`video_batch_calls=true`), sides alternating round by round.\n"
        "\n"
        "### Gateway overhead: header-only validation\n"
        "\n"
        f"{args.rounds} rounds of {args.calls} sequential calls per side; within a round "
        "the three sides take turns call by call (rotating order).\n"
        f"{over}\n"
        "### Video: a clip's frames in one call per service\n"
        f"{vid if vid else '(not run: --skip-video)'}\n"
    )
    print(body)
    if not args.dry_run:
        write_section("Serving overhead and video batching: before / after", body, key="overhead")


if __name__ == "__main__":
    main()
