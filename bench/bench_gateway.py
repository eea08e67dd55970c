"""Gateway end to end: a 10 s 720p clip (3 keyframes) vs one of its own frames, through the whole
mesh.

    .venv/bin/python -m bench.bench_gateway [--rounds 5]

Starts classify, ocr, face and hash as separate processes plus the gateway
(static discovery, loopback). Both sides analyse the same pictures: the video
side sends the 10 s 1280x720 sample clip to ``AnalyzeVideo`` (3 keyframes
sampled); the image side sends each of those same 3 sampled frames, as JPEG,
to ``Analyze`` one after the other, and its figure is their mean — the time of
one image with the clip's own content. A third side times the gateway's keyframe
decode of the clip alone. Every feature on, cache off, sides in turn within each
round (bench/harness.py). Two ratios per round: video / image (the GPU target is
2), and video / (decode + 3 images), the CPU target: a clip costs its decode and
its frames' compute, no more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Goal, Ratio, Report, Side, alternate
from gateway.video import decode_keyframes
from tests.support import encode
from tools.make_sample_video import make_video
from visionmesh import client, features
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

FRAMES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = Report("gateway", "Gateway: video vs image analysis")
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    clip = make_video(work / "clip720.mp4", seconds=10, size=(1280, 720))
    sampled = decode_keyframes(clip.read_bytes(), FRAMES)
    frames = [encode(f.rgb, quality=90) for f in sampled.frames]
    options = gateway_pb2.AnalyzeOptions(no_cache=True)
    n_features = len(features.all_features())
    mesh = LocalMesh(
        log_dir=work / "logs", extra_args={"hash": ["--set", f"storage.data_dir={work / 'hash'}"]}
    )
    try:
        address = mesh.start()
        with client.channel(address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            image_reqs = [
                gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=f), options=options)
                for f in frames
            ]

            def image_ms() -> float:
                took = []
                for req in image_reqs:
                    t = time.perf_counter()
                    reply = stub.Analyze(req, timeout=300)
                    took.append(time.perf_counter() - t)
                    assert not reply.errors, reply.errors
                return sum(took) / len(took) * 1000

            def decode_ms() -> float:
                t = time.perf_counter()
                decode_keyframes(clip.read_bytes(), FRAMES)
                return (time.perf_counter() - t) * 1000

            def video_ms() -> float:
                header = gateway_pb2.VideoUploadHeader(options=options, num_frames=FRAMES)
                t = time.perf_counter()
                reply = stub.AnalyzeVideo(client.video_messages(clip, header), timeout=300)
                took = time.perf_counter() - t
                assert not reply.errors, reply.errors
                return took * 1000

            sides = [
                Side("image", "`Analyze`, one 1280x720 frame of the clip (JPEG q90), all features; "
                     f"mean over the {FRAMES} sampled frames", "each service's defaults",
                     "1 call at a time", f"upload, decode, all {n_features} features, reply",
                     image_ms, "ms"),
                Side("decode", f"`decode_keyframes(clip, {FRAMES})`, the gateway's decode of the "
                     "clip alone, in this process", "PyAV defaults", "1",
                     "packet index pass, keyframe decode, RGB of the samples", decode_ms, "ms"),
                Side("video", f"`AnalyzeVideo`, the 10 s 1280x720 H.264 clip "
                     f"({clip.stat().st_size // 1024} KiB, client-streamed), {FRAMES} "
                     "keyframes, all features",
                     "each service's defaults", "1 call at a time (its frames concurrently inside)",
                     f"upload, keyframe decode, all {n_features} features on each frame, "
                     "aggregation", video_ms, "ms"),
            ]  # fmt: skip
            values = alternate(sides, args.rounds)
    finally:
        mesh.stop()
    timestamps = ", ".join(f"{f.timestamp_s:.2f}" for f in sampled.frames)
    report.add(
        f"Every service and the gateway as separate processes on loopback, all {n_features} "
        "features, "
        f"cache off; {args.rounds} rounds after a warm-up round. Both sides see the same pictures: "
        f"the frames sampled from the clip at {timestamps} s."
    )
    report.sides(sides)
    # The CPU target, round by round: the clip's decode plus its frames' compute.
    target = Side(
        "target", f"decode + {FRAMES} x image (the CPU target)", "-", "-",
        "derived from the round's decode and image figures", lambda: 0.0, "ms",
    )  # fmt: skip
    values["target"] = [
        d + FRAMES * i for d, i in zip(values["decode"], values["image"], strict=True)
    ]
    report.figures(
        [*sides, target],
        values,
        [
            Ratio(f"video / (decode + {FRAMES} x image)", "video", "target", Goal("<=", 1.0)),
            Ratio("video / image (the GPU target is 2)", "video", "image"),
        ],
    )
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
