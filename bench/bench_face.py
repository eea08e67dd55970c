"""Face service benchmark: RetinaFace service vs the MTCNN service vs bare models, one run.

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_face [--rounds 5] [--passes 2]
    [--concurrency 4]

On the same photos (astronaut: 1 face, the insightface group photo t1.jpg:
6 faces, coffee: none), round by round, each round running its sides in turn
(A B C, A B C, ...) so machine load hits all alike:

A. the face service (default: RetinaFace + age / gender / emotion behind
   dynamic batchers), own process, concurrent gRPC clients;
B. the same service with ``detector.kind=mtcnn`` (P/R/O-Net cascade, faces
   from 20 px: the previous default), same clients;
C. the service's pipeline code on bare ONNX Runtime sessions, one image at a
   time (no batcher, no gRPC).

Figures: medians over rounds of images/s, per-round ratios A/B and A/C, the
load average at each round. Then small-face recall on mosaics of the group
photo (``n x n`` copies shrunk ``n`` times: 6 n^2 faces of known position).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np
import onnxruntime as ort
import skimage.data
from PIL import Image

from bench.common import machine, write_section
from services.common.protos import rgb_to_image
from services.common.repository import ModelEntry, load_entry
from services.face.config import FaceConfig
from services.face.pipeline import DETECTOR_MODELS, FaceModels, FacePipeline
from tests.test_face_retinaface import group_mosaic, recall
from tests.test_face_service import fetch_group_photo
from visionmesh.mesh import LocalMesh, ServiceProcess, stop_process, wait_healthy
from visionmesh.v1 import face_pb2, face_pb2_grpc

HEADS = ("age", "gender", "emotion")
MTCNN_MIN_FACE = 20.0


def photos() -> dict[str, np.ndarray]:
    imgs = {"astronaut": skimage.data.astronaut()}
    group = fetch_group_photo()
    if group is None:
        raise SystemExit("needs the group photo t1.jpg (pip download insightface==2.1 failed)")
    imgs["t1"] = np.asarray(Image.open(group).convert("RGB"))
    imgs["coffee"] = skimage.data.coffee()
    return imgs


class BareModel:
    """An ONNX Runtime session called directly (same engine settings as the service's default)."""

    def __init__(self, name: str, threads: int) -> None:
        self.entry: ModelEntry = load_entry(name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads > 0:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.entry.onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.session.get_outputs()]

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: object = None
    ) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, inputs), strict=True))


def bare_pipeline(threads: int, cfg: FaceConfig) -> FacePipeline:
    names = (*HEADS, *DETECTOR_MODELS[cfg.detector.kind])
    configs = {"retinaface": cfg.retinaface, "pnet": cfg.mtcnn.pnet, "rnet": cfg.mtcnn.rnet}
    configs.update(onet=cfg.mtcnn.onet, age=cfg.age, gender=cfg.gender, emotion=cfg.emotion)
    models = {n: BareModel(configs[n].name, threads) for n in names}
    return FacePipeline(FaceModels(**models), cfg)  # type: ignore[arg-type]


@dataclass
class Run:
    images_s: float
    faces: int
    latency_ms: float


async def measure(
    work: list[np.ndarray], concurrency: int, call: Callable[[np.ndarray], Awaitable[int]]
) -> Run:
    """Process the fixed ``work`` list with ``concurrency`` workers (same images on every side)."""
    queue = list(reversed(work))
    faces, latencies = 0, []

    async def worker() -> None:
        nonlocal faces
        while queue:
            img = queue.pop()
            t = time.perf_counter()
            found = await call(img)
            faces += found
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Run(len(work) / elapsed, faces, statistics.median(latencies) * 1000)


def start(mesh: LocalMesh, name: str, sets: list[str]) -> ServiceProcess:
    mesh.extra_args["face"] = [a for s in sets for a in ("--set", s)]
    proc = mesh._spawn("face", _free_port(), mesh.extra_args["face"])
    if not wait_healthy(proc, time.monotonic() + 120):
        raise RuntimeError(f"{name} did not become healthy; see {proc.log_path}")
    return proc


def _free_port() -> int:
    from services.common.net import free_port

    return free_port("127.0.0.1")


async def rounds(
    addresses: dict[str, str],
    bare: FacePipeline,
    imgs: list[np.ndarray],
    n_rounds: int,
    passes: int,
    concurrency: int,
) -> list[dict[str, Run | float]]:
    work = [img for _ in range(passes) for img in imgs]
    requests = {id(img): face_pb2.DetectRequest(image=rgb_to_image(img)) for img in imgs}
    cfg = bare.config
    channels = {k: grpc.aio.insecure_channel(a) for k, a in addresses.items()}
    stubs = {k: face_pb2_grpc.FaceServiceStub(c) for k, c in channels.items()}

    def service(side: str) -> Callable[[np.ndarray], Awaitable[int]]:
        async def call(img: np.ndarray) -> int:
            return len((await stubs[side].Detect(requests[id(img)], timeout=300)).faces)

        return call

    async def bare_call(img: np.ndarray) -> int:
        return len(await bare.analyse(img, cfg.detector.min_face_size, cfg.detector.max_faces))

    sides: dict[str, tuple[int, Callable[[np.ndarray], Awaitable[int]]]] = {
        "retinaface": (concurrency, service("retinaface")),
        "mtcnn": (concurrency, service("mtcnn")),
        "retinaface 320": (concurrency, service("retinaface 320")),
        "bare": (1, bare_call),
    }
    for conc, call in sides.values():  # warm-up
        await measure(imgs, conc, call)
    out: list[dict[str, Run | float]] = []
    try:
        for _ in range(n_rounds):
            row: dict[str, Run | float] = {"load": os.getloadavg()[0]}
            for side, (conc, call) in sides.items():
                row[side] = await measure(work, conc, call)
            out.append(row)
    finally:
        for c in channels.values():
            await c.close()
    return out


async def small_faces(address: str, photo: np.ndarray, tiles: list[int]) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = face_pb2_grpc.FaceServiceStub(channel)
        out = []
        for n in tiles:
            img, points = group_mosaic(photo, n)
            reply = await stub.Detect(
                face_pb2.DetectRequest(image=rgb_to_image(img), max_faces=1000), timeout=300
            )
            out.append(recall(list(reply.faces), points))
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=2, help="passes over the photos per side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--engine-threads", type=int, default=1)
    args = parser.parse_args()
    named = photos()
    imgs = list(named.values())
    threads = f"engine.threads={args.engine_threads}"
    base = [
        f"{m}.{threads}" for m in (*HEADS, "retinaface", "mtcnn.pnet", "mtcnn.rnet", "mtcnn.onet")
    ]
    mtcnn_sets = [*base, "detector.kind=mtcnn", f"detector.min_face_size={MTCNN_MIN_FACE:g}"]
    sides = {
        "retinaface": base,
        "mtcnn": mtcnn_sets,
        "retinaface 1280": [*base, "detector.retinaface.buckets=[320,640,1280]"],
        "retinaface 320": [*base, "detector.retinaface.buckets=[320]"],
    }
    tiles = [1, 2, 3, 4, 5]
    mesh = LocalMesh(services=["face"], engine_threads=None)
    procs: dict[str, ServiceProcess] = {}
    try:
        for name, sets in sides.items():
            procs[name] = start(mesh, name, sets)
        bare = bare_pipeline(args.engine_threads, FaceConfig())
        table = asyncio.run(
            rounds(
                {k: procs[k].address for k in ("retinaface", "mtcnn", "retinaface 320")},
                bare,
                imgs,
                args.rounds,
                args.passes,
                args.concurrency,
            )
        )
        recalls = {
            name: asyncio.run(small_faces(proc.address, named["t1"], tiles))
            for name, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            stop_process(proc)

    def runs(side: str) -> list[Run]:
        return [r[side] for r in table]  # type: ignore[misc]

    ret, mt, bare_runs = runs("retinaface"), runs("mtcnn"), runs("bare")
    fast = runs("retinaface 320")
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    lines = [
        "| round | load avg (1 min) | RetinaFace service img/s | MTCNN service img/s "
        "| bare RetinaFace pipeline img/s | RetinaFace / MTCNN | service / bare | "
        "RetinaFace 320 only img/s | RetinaFace 320 / MTCNN |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(table):
        a, b, c, d = ret[i], mt[i], bare_runs[i], fast[i]
        lines.append(
            f"| {i + 1} | {row['load']:.1f} | {a.images_s:.2f} | {b.images_s:.2f} | "
            f"{c.images_s:.2f} | {a.images_s / b.images_s:.1f} | "
            f"{a.images_s / c.images_s:.2f} | {d.images_s:.2f} | "
            f"{d.images_s / b.images_s:.1f} |"
        )
    ratio_mt = med([a.images_s / b.images_s for a, b in zip(ret, mt, strict=True)])
    ratio_fast = med([d.images_s / b.images_s for d, b in zip(fast, mt, strict=True)])
    ratio_bare = med([a.images_s / c.images_s for a, c in zip(ret, bare_runs, strict=True)])
    faces = {k: runs(k)[0].faces for k in ("retinaface", "mtcnn", "bare", "retinaface 320")}
    sizes = ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in named.items())
    h, w = named["t1"].shape[:2]
    recall_rows = "\n".join(
        f"| {n} x {n} | {6 * n * n} | about {int(100 / n)}-{int(145 / n)} px | "
        + " | ".join(f"{recalls[s][i]:.2f}" for s in sides)
        + " |"
        for i, n in enumerate(tiles)
    )
    body = (
        "\n"
        "Command: `flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_face "
        f"--rounds {args.rounds} --passes {args.passes} --concurrency {args.concurrency} "
        f"--engine-threads {args.engine_threads}`\n"
        f"Machine: {machine()}; load average per round below.\n"
        f"Work per side and round: photos {sizes}, {args.passes} passes = "
        f"{args.passes * len(imgs)} images\n"
        f"(faces found per pass set: RetinaFace service {faces['retinaface']}, MTCNN "
        f"service {faces['mtcnn']}, bare {faces['bare']}).\n"
        "Sides run in turn inside each round (A B C, A B C, ...); services get "
        f"{args.concurrency} concurrent\n"
        f"gRPC clients, the bare pipeline one image at a time; {args.engine_threads} ONNX "
        "Runtime intra-op thread(s) per model everywhere.\n"
        f"MTCNN side: `detector.kind=mtcnn`, faces from {MTCNN_MIN_FACE:g} px (its previous "
        "default).\n"
        "\n"
        f"{chr(10).join(lines)}\n"
        "\n"
        "| median | RetinaFace service | MTCNN service | bare RetinaFace pipeline |\n"
        "|---|---:|---:|---:|\n"
        f"| images/s | **{med([r.images_s for r in ret]):.2f}** | "
        f"{med([r.images_s for r in mt]):.2f} | {med([r.images_s for r in bare_runs]):.2f} "
        "|\n"
        f"| latency per image (median) | {med([r.latency_ms for r in ret]):.0f} ms | "
        f"{med([r.latency_ms for r in mt]):.0f} ms | "
        f"{med([r.latency_ms for r in bare_runs]):.0f} ms |\n"
        "\n"
        "Median of per-round ratios: **RetinaFace service / MTCNN service = "
        f"{ratio_mt:.1f}x**, **service / bare models = {ratio_bare:.2f}**;\n"
        "with one 320 px bucket only (`detector.retinaface.buckets=[320]`, faces found per "
        f"pass set: {faces['retinaface 320']}): **{ratio_fast:.1f}x** MTCNN.\n"
        "\n"
        f"Small faces: recall on mosaics of the group photo in a {w}x{h} frame (n x n "
        "copies shrunk n\n"
        "times; a face counts as found when a returned box contains its centre).\n"
        "\n"
        f"| mosaic | faces | face size | {' | '.join(sides)} |\n"
        f"|---|---:|---|{'---:|' * len(sides)}\n"
        f"{recall_rows}\n"
        "\n"
        "The default buckets (320, 640) halve a 1280 px frame, so faces under about 20 px "
        "in the\n"
        "frame are lost; `detector.retinaface.buckets: [320, 640, 1280]` keeps them at "
        "about 4x the\n"
        "detector's cost for such frames.\n"
    )
    print(body)
    write_section("Face service", body)


if __name__ == "__main__":
    main()
