"""Face service benchmark: the RetinaFace service vs the MTCNN service vs its own bare models.

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_face [--seconds 5]
    [--rounds 7] [--concurrency 4]
    .venv/bin/python -m bench.bench_face --stages   # CPU time per stage (docs/face.md)

On the same photos (astronaut: 1 face, the insightface group photo t1.jpg:
6 faces, coffee: none; round robin), in alternating rounds (bench/harness.py:
sides in turn within each round, per-round ratios, no figures when the rounds
disagree by more than the allowed spread):

* ``retinaface``: the face service (RetinaFace + age / gender / emotion behind
  dynamic batchers) in its own process, ``--concurrency`` gRPC client tasks;
* ``mtcnn``: the same service with ``detector.kind=mtcnn`` (P/R/O-Net cascade,
  faces from 20 px), same clients;
* ``bare``: the service's ``FacePipeline`` code on bare ONNX Runtime sessions
  in this process (no batcher, no gRPC), the same number of concurrent calls,
  each session run in a worker thread as the service's engines are;
* ``square``: the service with ``detector.retinaface.pad_to_square=true``
  (every image padded to its bucket's square, the previous default);
* ``r320``: the service with one 320 px bucket.

Every side: 1 ONNX Runtime intra-op thread per model. Then small-face recall
on mosaics of the group photo (``n x n`` copies shrunk ``n`` times: 6 n^2
faces of known position) for each service configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import skimage.data
from PIL import Image

from bench.harness import Goal, Ratio, Report, Side, alternate, fmt
from bench.load import CpuUse
from services.common.protos import rgb_to_image
from services.common.repository import ModelEntry, load_entry
from services.face import attributes, retinaface
from services.face.config import FaceConfig
from services.face.pipeline import DETECTOR_MODELS, FaceModels, FacePipeline
from tests.test_face_retinaface import group_mosaic, recall
from tests.test_face_service import fetch_group_photo
from visionmesh.mesh import LocalMesh, ServiceProcess, free_port, stop_process, wait_healthy
from visionmesh.v1 import face_pb2, face_pb2_grpc

HEADS = ("age", "gender", "emotion")
MTCNN_MIN_FACE = 20.0
TILES = (1, 2, 3, 4, 5)


def photos() -> dict[str, np.ndarray]:
    imgs = {"astronaut": skimage.data.astronaut()}
    group = fetch_group_photo()
    if group is None:
        raise SystemExit("needs the group photo t1.jpg (make testdata)")
    imgs["t1"] = np.asarray(Image.open(group).convert("RGB"))
    imgs["coffee"] = skimage.data.coffee()
    return imgs


def session(entry: ModelEntry, threads: int) -> ort.InferenceSession:
    """A session with the service engine's settings (services/common/engines)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    # As the engines' default (engine.spin_wait false): idle threads sleep instead of spinning.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads > 0:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(entry.onnx_path), opts, providers=["CPUExecutionProvider"])


class BareModel:
    """An ONNX Runtime session behind the pipeline's ``Model`` interface, no batcher: each call
    is one run in a worker thread (as the service's engines run), so concurrent calls overlap."""

    def __init__(self, name: str, threads: int) -> None:
        self.entry: ModelEntry = load_entry(name)
        self.session = session(self.entry, threads)
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, inputs), strict=True))

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: object = None
    ) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self.run, inputs)


def bare_pipeline(threads: int, cfg: FaceConfig) -> FacePipeline:
    names = (*HEADS, *DETECTOR_MODELS[cfg.detector.kind])
    configs = {"retinaface": cfg.retinaface, "pnet": cfg.mtcnn.pnet, "rnet": cfg.mtcnn.rnet}
    configs.update(onet=cfg.mtcnn.onet, age=cfg.age, gender=cfg.gender, emotion=cfg.emotion)
    models = {n: BareModel(configs[n].name, threads) for n in names}
    return FacePipeline(FaceModels(**models), cfg)  # type: ignore[arg-type]


Call = Callable[[np.ndarray], Awaitable[int]]
# Opens what a side calls through (a gRPC channel of the running event loop), closes it after.
Opener = Callable[[], AbstractAsyncContextManager[Call]]


class Rate:
    """Images/s of a side over the photos (round robin) for ``seconds``, ``concurrency`` tasks;
    keeps every call's latency."""

    def __init__(self, imgs: list[np.ndarray], seconds: float, concurrency: int) -> None:
        self.imgs, self.seconds, self.concurrency = imgs, seconds, concurrency
        self.latencies: dict[str, list[float]] = {}

    async def run(self, key: str, opener: Opener) -> float:
        async with opener() as call:
            await call(self.imgs[0])  # untimed: connection set-up
            done = 0
            lat = self.latencies.setdefault(key, [])
            stop_at = time.perf_counter() + self.seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    img = self.imgs[done % len(self.imgs)]
                    done += 1
                    t = time.perf_counter()
                    await call(img)
                    lat.append(time.perf_counter() - t)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            return done / (time.perf_counter() - start)


def over_grpc(
    address: str,
    stub_class: Callable[[grpc.aio.Channel], Any],
    count: Callable[..., Awaitable[int]],
) -> Opener:
    """Calls on one channel: ``count(stub, img)`` makes one and returns what it found."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Call]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = stub_class(channel)

            async def call(img: np.ndarray) -> int:
                return await count(stub, img)

            yield call

    return opener


def service(address: str, requests: dict[int, face_pb2.DetectRequest]) -> Opener:
    """Detect calls; ``requests`` holds each photo's request, built once."""

    async def faces(stub: face_pb2_grpc.FaceServiceStub, img: np.ndarray) -> int:
        return len((await stub.Detect(requests[id(img)], timeout=300)).faces)

    return over_grpc(address, face_pb2_grpc.FaceServiceStub, faces)


def in_process(call: Call) -> Opener:
    @asynccontextmanager
    async def opener() -> AsyncIterator[Call]:
        yield call

    return opener


def start(mesh: LocalMesh, name: str, sets: list[str]) -> ServiceProcess:
    proc = mesh._spawn("face", free_port(mesh.host), [a for s in sets for a in ("--set", s)])
    if not wait_healthy(proc, time.monotonic() + 120):
        raise RuntimeError(f"{name} did not become healthy; see {proc.log_path}")
    return proc


async def small_faces(address: str, photo: np.ndarray) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = face_pb2_grpc.FaceServiceStub(channel)
        out = []
        for n in TILES:
            img, points = group_mosaic(photo, n)
            reply = await stub.Detect(
                face_pb2.DetectRequest(image=rgb_to_image(img), max_faces=1000), timeout=300
            )
            out.append(recall(list(reply.faces), points))
        return out


def recall_table(photo: np.ndarray, recalls: dict[str, list[float]]) -> str:
    h, w = photo.shape[:2]
    rows = [
        f"Small faces: recall on mosaics of the group photo in a {w}x{h} frame (n x n copies "
        "shrunk n times; a face counts as found when a returned box contains its centre).",
        "",
        f"| mosaic | faces | face size | {' | '.join(recalls)} |",
        f"|---|---:|---|{'---:|' * len(recalls)}",
    ]
    for i, n in enumerate(TILES):
        cells = " | ".join(f"{r[i]:.2f}" for r in recalls.values())
        rows.append(
            f"| {n} x {n} | {6 * n * n} | about {int(100 / n)}-{int(145 / n)} px | {cells} |"
        )
    return "\n".join(rows)


def recall_sentence(recalls: dict[str, list[float]], least: float = 0.95) -> str:
    """Down to which mosaic each configuration keeps ``least`` recall, from this run."""
    parts = []
    for name, values in recalls.items():
        kept = [n for n, r in zip(TILES, values, strict=True) if r >= least]
        n = max(kept) if kept else None
        parts.append(
            f"{name}: down to {n} x {n} (faces of about {int(100 / n)} px)"
            if n
            else f"{name}: none"
        )
    return (
        f"Recall >= {least:.2f} (this run): " + "; ".join(parts) + ". `retinaface`, `square` "
        "and `bare` scale a frame alike (buckets 320, 640), so they differ in speed, not in what "
        "they find; `r1280` adds a 1280 px bucket."
    )


# --- CPU time per stage (--stages) -----------------------------------------------------------


def thread_cpu() -> dict[tuple[int, str], float]:
    """CPU seconds of every live thread of this process, by (native id, name stem): Python
    threads by their name, native ones (gRPC's event engine, ...) by their kernel name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for task in os.listdir("/proc/self/task"):
        path = Path(f"/proc/self/task/{task}")
        try:
            comm, use = (path / "comm").read_text().strip(), CpuUse.read(path / "stat")
        except OSError:  # the thread ended
            continue
        name = names.get(int(task), f"{comm} (native)")
        out[(int(task), re.sub(r"(_\d+)+$", "", name))] = use.cpu_s
    return out


def bare_stages(imgs: dict[str, np.ndarray], repeats: int) -> str:
    """Each stage of the pipeline's own code on bare sessions, one image at a time: CPU ms of
    the calling thread (1 ORT thread runs in it), median of ``repeats``."""
    from services.face.detector import RetinaFaceDetector

    cfg = FaceConfig()
    pipeline = bare_pipeline(1, cfg)
    models: dict[str, BareModel] = {n: getattr(pipeline.models, n) for n in ("retinaface", *HEADS)}
    detector = pipeline.detector
    assert isinstance(detector, RetinaFaceDetector)
    rcfg = cfg.detector.retinaface
    cpu: dict[tuple[str, str], list[float]] = {}

    def stage(image: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.thread_time()
        out = fn(*args)
        cpu.setdefault((image, name), []).append(time.thread_time() - start)
        return out

    for _ in range(repeats + 1):
        for name, rgb in imgs.items():
            h, w = rgb.shape[:2]
            side = retinaface.pick_bucket(h, w, rcfg.buckets)
            x, box = stage(name, "letterbox", retinaface.letterbox, rgb, side, rcfg.pad_to_square)
            out = stage(name, "RetinaFace", models["retinaface"].run, {"input": x})
            det = stage(name, "decode, NMS", detector._select, out, box, (h, w), 10.0, 50)
            if len(det) == 0:
                continue
            chips = stage(name, "align: 3 chips per face + head inputs", pipeline._chips, rgb, det)
            for n in HEADS:
                feed = {models[n].entry.inputs[0].name: chips.inputs[n]}
                stage(name, f"{n} head", models[n].run, feed)
            stage(name, "pose, quality", lambda c=chips, d=det: [
                (attributes.pose_from_landmarks(lm), attributes.face_quality(a, cfg.quality))
                for lm, a in zip(d.landmarks, c.age, strict=True)
            ])  # fmt: skip
    names = list(dict.fromkeys(stage for _, stage in cpu))
    rows = [
        f"| stage (ms CPU, median of {repeats}) | {' | '.join(imgs)} |",
        f"|---|{'---:|' * len(imgs)}",
    ]
    for stage_name in names:
        cells = [
            fmt(1000 * statistics.median(cpu[(i, stage_name)][1:]))
            if (i, stage_name) in cpu
            else "-"
            for i in imgs
        ]
        rows.append(f"| {stage_name} | {' | '.join(cells)} |")
    total = [
        fmt(1000 * sum(statistics.median(v[1:]) for (i, _), v in cpu.items() if i == img))
        for img in imgs
    ]
    rows.append(f"| **total** | {' | '.join(total)} |")
    return "\n".join(rows)


async def service_threads(
    imgs: list[np.ndarray], concurrency: int, calls: int, detector: dict[str, Any] | None = None
) -> tuple[str, float]:
    """The service in this process: CPU ms per image by thread (the event loop also runs the
    client), and for the whole process."""
    from services.face.main import DEFINITION
    from tests.support import running_service

    models = (*HEADS, "retinaface")
    overrides: dict[str, Any] = {m: {"engine": {"threads": 1}} for m in models}
    overrides["mtcnn"] = {m: {"engine": {"threads": 1}} for m in ("pnet", "rnet", "onet")}
    overrides["detector"] = detector or {}
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = face_pb2_grpc.FaceServiceStub(channel)
        requests = [face_pb2.DetectRequest(image=rgb_to_image(i)) for i in imgs]
        for r in requests:
            await stub.Detect(r, timeout=60)
        work = [requests[k % len(requests)] for k in range(calls)]

        async def worker() -> None:
            while work:
                await stub.Detect(work.pop(), timeout=60)

        before, cpu0 = thread_cpu(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        after, cpu1 = thread_cpu(), time.process_time()
    by_name: dict[str, float] = {}
    for key, seconds in after.items():
        by_name[key[1]] = by_name.get(key[1], 0.0) + seconds - before.get(key, 0.0)
    rows = [
        f"| thread ({concurrency} concurrent calls, {calls} calls) | ms CPU per image |",
        "|---|---:|",
    ]
    rows += [
        f"| {name} | {1000 * s / calls:.1f} |"
        for name, s in sorted(by_name.items(), key=lambda kv: -kv[1])
        if s > 0
    ]
    total = 1000 * (cpu1 - cpu0) / calls
    rows.append(f"| **whole process** | {total:.1f} |")
    return "\n".join(rows), total


def stages(repeats: int) -> None:
    """CPU per stage and per thread: its own section of docs/benchmarks.md ("face-stages")."""
    report = Report("face-stages", "Face service: CPU time per stage")
    imgs = photos()
    report.add(
        "CPU time (`time.thread_time` per stage, `/proc` per thread), 1 ONNX Runtime intra-op "
        "thread per model. CPU per image is what throughput on a saturated machine is inversely "
        "proportional to, and, unlike images/s, it barely moves with the machine's other load."
    )
    report.add(bare_stages(imgs, repeats))
    work = list(imgs.values())
    table, _ = asyncio.run(service_threads(work, 4, 10 * len(imgs)))
    report.add(table)
    configs: dict[str, dict[str, Any]] = {
        "RetinaFace (default)": {},
        "RetinaFace, pad_to_square": {"retinaface": {"pad_to_square": True}},
        "RetinaFace, one 320 px bucket": {"retinaface": {"buckets": [320]}},
        f"MTCNN, faces from {MTCNN_MIN_FACE:g} px": {
            "kind": "mtcnn",
            "min_face_size": MTCNN_MIN_FACE,
        },
    }
    totals = {
        name: asyncio.run(service_threads(work, 4, 5 * len(imgs), det))[1]
        for name, det in configs.items()
    }
    mtcnn = totals[f"MTCNN, faces from {MTCNN_MIN_FACE:g} px"]
    rows = [
        "| service, 4 concurrent calls (client in the process) | ms CPU per image | MTCNN / this |",
        "|---|---:|---:|",
        *(f"| {name} | {ms:.1f} | {mtcnn / ms:.1f} |" for name, ms in totals.items()),
    ]
    report.add("\n".join(rows))
    report.write()


# --- the comparison ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--engine-threads", type=int, default=1)
    parser.add_argument(
        "--instances", type=int, default=os.cpu_count() or 1, help="engine instances per model"
    )
    parser.add_argument("--stages", action="store_true", help="CPU time per stage, then exit")
    args = parser.parse_args()
    if args.stages:
        stages(repeats=6)
        return

    report = Report("face-service", "Face service")
    named = photos()
    imgs = list(named.values())
    threads = f"engine.threads={args.engine_threads}"
    # One engine instance per core: with one intra-op thread, a single instance of the
    # detector would cap the service at one core's worth of detections, while the bare side's
    # concurrent calls run the same session from several threads at once.
    base = [
        f"{m}.{setting}"
        for m in (*HEADS, "retinaface", "mtcnn.pnet", "mtcnn.rnet", "mtcnn.onet")
        for setting in (threads, f"batcher.instances={args.instances}")
    ]
    configs = {
        "retinaface": base,
        "mtcnn": [*base, "detector.kind=mtcnn", f"detector.min_face_size={MTCNN_MIN_FACE:g}"],
        "square": [*base, "detector.retinaface.pad_to_square=true"],
        "r320": [*base, "detector.retinaface.buckets=[320]"],
        "r1280": [*base, "detector.retinaface.buckets=[320,640,1280]"],
    }
    rate = Rate(imgs, args.seconds, args.concurrency)
    mesh = LocalMesh(services=["face"], engine_threads=None)
    procs: dict[str, ServiceProcess] = {}
    try:
        for name, sets in configs.items():
            procs[name] = start(mesh, name, sets)
        bare = bare_pipeline(args.engine_threads, FaceConfig())
        requests = {id(i): face_pb2.DetectRequest(image=rgb_to_image(i)) for i in imgs}
        openers: dict[str, Opener] = {
            k: service(procs[k].address, requests)
            for k in ("retinaface", "mtcnn", "square", "r320")
        }

        async def bare_call(img: np.ndarray) -> int:
            det = bare.config.detector
            return len(await bare.analyse(img, det.min_face_size, det.max_faces))

        openers["bare"] = in_process(bare_call)

        async def found(opener: Opener) -> int:
            async with opener() as call:
                return sum([await call(img) for img in imgs])

        faces = {k: asyncio.run(found(o)) for k, o in openers.items()}

        def measure(key: str) -> Callable[[], float]:
            return lambda: asyncio.run(rate.run(key, openers[key]))

        c = f"{args.concurrency} gRPC client tasks (this process)"
        t = (
            f"{args.engine_threads} ORT intra-op thread per model; service: "
            f"{args.instances} engine instances per model"
        )
        rpc = "gRPC round trip with raw RGB, validation, "
        work = "detection, alignment, age / gender / emotion heads, pose, quality"
        sides = [
            Side("retinaface", "face service (default: RetinaFace, buckets 320/640, padded to "
                 "a multiple of 32)", t, c, rpc + work, measure("retinaface")),
            Side("mtcnn", f"face service, `detector.kind=mtcnn`, faces from {MTCNN_MIN_FACE:g} px",
                 t, c, rpc + work, measure("mtcnn")),
            Side("bare", "the same `FacePipeline` on bare ORT sessions (no batcher, no gRPC)", t,
                 f"{args.concurrency} concurrent calls (this process), each session run in a "
                 "worker thread", work, measure("bare")),
            Side("square", "face service, `detector.retinaface.pad_to_square=true`", t, c,
                 rpc + work, measure("square")),
            Side("r320", "face service, one 320 px bucket", t, c, rpc + work, measure("r320")),
        ]  # fmt: skip
        values = alternate(sides, args.rounds)
        recalls = {
            name: asyncio.run(small_faces(proc.address, named["t1"]))
            for name, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            stop_process(proc)

    sizes = ", ".join(f"{k} {v.shape[1]}x{v.shape[0]}" for k, v in named.items())
    report.add(
        f"{args.rounds} rounds of {args.seconds:g} s per side after a warm-up round, sides in "
        f"turn within each round; medians and per-round ratios. Photos {sizes}, round robin. "
        "Faces found on the three photos: " + ", ".join(f"{k} {v}" for k, v in faces.items()) + "."
    )
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio("RetinaFace service / MTCNN service", "retinaface", "mtcnn", Goal(">=", 10.0)),
            Ratio("service / bare models (same concurrency, threads)", "retinaface", "bare",
                  Goal(">=", 0.9)),
            Ratio("padded to a multiple of 32 / to the bucket's square", "retinaface", "square"),
            Ratio("one 320 px bucket / MTCNN service", "r320", "mtcnn"),
        ],
    )  # fmt: skip
    p50 = {k: 1000 * statistics.median(v) for k, v in rate.latencies.items()}
    report.add(
        f"Latency per call at {args.concurrency} in flight (median over all rounds): "
        + ", ".join(f"{k} {p50[k]:.0f} ms" for k in (s.key for s in sides))
        + "."
    )
    report.add(recall_table(named["t1"], recalls) + "\n\n" + recall_sentence(recalls))
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
