"""Gateway end to end: a 10 s 720p clip (3 keyframes) vs one image, through the whole mesh.

    .venv/bin/python -m bench.bench_gateway [--runs 7]

Starts classify, ocr, face and hash as separate processes plus the gateway
(static discovery, loopback), then times, interleaved and with the cache off:
``AnalyzeVideo`` of the 10 s 1280x720 sample clip sampling 3 keyframes, and
``Analyze`` of one 1280x720 frame-sized photo, every feature on. Reports medians
and the ratio (goal <= 2x), and writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from bench.common import machine, median, write_section
from tests.support import encode
from tools.make_sample_video import make_video
from visionmesh import client
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def _copy(header: gateway_pb2.VideoUploadHeader) -> gateway_pb2.VideoUploadHeader:
    fresh = gateway_pb2.VideoUploadHeader()
    fresh.CopyFrom(header)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    clip = make_video(work / "clip720.mp4", seconds=10, size=(1280, 720))
    photo = encode(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1280, 720))))
    options = gateway_pb2.AnalyzeOptions(no_cache=True)
    mesh = LocalMesh(
        log_dir=work / "logs", extra_args={"hash": ["--set", f"storage.data_dir={work / 'hash'}"]}
    )
    image_s, video_s = [], []
    try:
        address = mesh.start()
        with client.channel(address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            image_req = gateway_pb2.AnalyzeRequest(
                image=common_pb2.Image(encoded=photo), options=options
            )
            header = gateway_pb2.VideoUploadHeader(options=options, num_frames=3)
            for i in range(args.runs + 1):
                t = time.perf_counter()
                reply = stub.Analyze(image_req, timeout=120)
                image_took = time.perf_counter() - t
                t = time.perf_counter()
                video = stub.AnalyzeVideo(client.video_messages(clip, _copy(header)), timeout=120)
                video_took = time.perf_counter() - t
                if i == 0:  # warm-up
                    assert not reply.errors and not video.errors, (reply.errors, video.errors)
                    continue
                image_s.append(image_took)
                video_s.append(video_took)
    finally:
        mesh.stop()
    img, vid = median(image_s) * 1000, median(video_s) * 1000
    body = f"""
Command: `.venv/bin/python -m bench.bench_gateway --runs {args.runs}`
Machine: {machine()}; every service and the gateway as separate processes on loopback, all four features, cache off, {args.runs} interleaved runs after a warm-up.

| what | median |
|---|---|
| `Analyze`, one 1280x720 photo, all features | {img:.0f} ms |
| `AnalyzeVideo`, 10 s 1280x720 H.264 clip ({clip.stat().st_size // 1024} KiB, client-streamed), 3 keyframes, all features | {vid:.0f} ms |
| **video / image** (goal <= 2x) | **{vid / img:.2f}x** |

The three sampled frames are analysed concurrently, so the services' dynamic
batchers merge their work; the video path adds the upload, keyframe-only
decode and aggregation. On this 2-core CPU the models are compute-bound, so
three frames cost about three images' worth of compute whatever the batching:
~3x is the floor here, and the <= 2x goal is not met. It needs spare parallel
capacity — a GPU, where a batch of 3 costs about what 1 does, or more cores.
"""
    print(body)
    write_section("Gateway: video vs image analysis", body)


if __name__ == "__main__":
    main()
