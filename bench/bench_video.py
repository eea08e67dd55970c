"""Video decoding benchmark: keyframe-only sampling vs decoding every frame.

    .venv/bin/python -m bench.bench_video [--runs 5] [--seconds 10] [--size 1280x720] [--frames 3]

On one clip made by tools/make_sample_video.py (H.264 High, yuv420p, 30 fps,
a keyframe every 2 s, pan/zoom over scikit-image photos), interleaved runs of:

1. ``decode_keyframes(data, N)`` — what the gateway does: demux index pass,
   keyframe-only decode (``skip_frame=NONKEY``), RGB conversion of the N samples;
2. ``decode_all_frames(data)`` — every frame decoded and converted to RGB (what
   "sample N frames" costs without the keyframe trick, e.g. OpenCV-style reading);
3. every frame decoded, no RGB conversion (the decoder alone, the fairest baseline);
4. ``decode_keyframes`` on the same clip encoded with a single keyframe (the
   fallback: the samples without a keyframe are decoded for real).

Cases alternate round by round (bench/harness.py); medians, per-round ratios and CPU
time are written to docs/benchmarks.md ("Video").
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from bench.harness import Ratio, Report, Side, alternate
from gateway.video import decode_all_frames, decode_keyframes
from tools.make_sample_video import make_video


def decode_only(data: bytes) -> int:
    """Every frame through the decoder, no pixel conversion."""
    count = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        for _ in container.decode(container.streams.video[0]):
            count += 1
    return count


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    report = Report("video", "Video")

    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp) / "clip.mp4", seconds=args.seconds, size=(width, height))
        data = path.read_bytes()
        one_key = make_video(
            Path(tmp) / "one_key.mp4", seconds=args.seconds, size=(width, height), gop=10_000
        ).read_bytes()
    clip = decode_keyframes(data, args.frames)
    fill = decode_keyframes(one_key, args.frames)
    total_frames = decode_only(data)
    wall: dict[str, list[float]] = {}

    # The compared figure is CPU time (the work done, steadier on a busy machine); wall time is
    # reported beside it.
    def timed_ms(key: str, fn: Callable[[], object]) -> Callable[[], float]:
        def measure() -> float:
            wall_s, cpu_s = timed(fn)
            wall.setdefault(key, []).append(wall_s * 1000)
            return cpu_s * 1000

        return measure

    one = "1 (this process)"
    sides = [
        Side("keyframes",
             f"`decode_keyframes(data, {args.frames})`: packet index pass + keyframe-only "
             f"decode + RGB of {len(clip.frames)} samples (the gateway's path)",
             "PyAV defaults", one, "the call",
             timed_ms("keyframes", lambda: decode_keyframes(data, args.frames)), "CPU ms"),
        Side("all_rgb",
             f"`decode_all_frames(data)`: all {total_frames} frames decoded and converted "
             "to RGB",
             "PyAV defaults", one, "the call",
             timed_ms("all_rgb", lambda: decode_all_frames(data)), "CPU ms"),
        Side("all_decode_only", f"all {total_frames} frames through the decoder, no RGB conversion",
             "PyAV defaults", one, "the decode loop",
             timed_ms("all_decode_only", lambda: decode_only(data)), "CPU ms"),
        Side("one_keyframe_fill",
             f"same clip encoded with one keyframe: `decode_keyframes` fallback "
             f"({fill.keyframes_decoded} keyframe(s), samples at "
             f"{', '.join(f'{f.timestamp_s:.2f}' for f in fill.frames)} s)",
             "PyAV defaults", one, "the call",
             timed_ms("one_keyframe_fill", lambda: decode_keyframes(one_key, args.frames)),
             "CPU ms"),
    ]  # fmt: skip
    values = alternate(sides, args.runs)
    report.add(
        f"Clip: made by `tools/make_sample_video.py` — {clip.width}x{clip.height} {clip.codec} "
        f"(libx264 veryfast, crf 23, yuv420p), {clip.fps:g} fps, {clip.duration_s:.0f} s, "
        f"{total_frames} frames, {clip.keyframes_decoded} keyframes, {len(data) / 1e6:.1f} MB, "
        f"pan/zoom over four scikit-image scenes. {args.runs} rounds after a warm-up round, "
        "cases in turn within each round; figures are CPU milliseconds per call (this process, all "
        "threads, `time.process_time`), wall time in the second table."
    )
    report.sides(sides)
    report.figures(
        sides,
        values,
        [
            Ratio("full decode + RGB / keyframe sampling (CPU)", "all_rgb", "keyframes"),
            Ratio("full decode only / keyframe sampling (CPU)", "all_decode_only", "keyframes"),
        ],
    )
    cpu_rows = ["| what | median wall ms | rounds |", "|---|---:|---|"]
    for side in sides:
        runs = wall[side.key][1:]  # the warm-up round's entry left out
        cpu_rows.append(
            f"| {side.key} | {statistics.median(runs):.0f} | "
            f"{', '.join(f'{v:.0f}' for v in runs)} |"
        )
    report.add("\n".join(cpu_rows))
    sys.exit(0 if report.write() else 3)


if __name__ == "__main__":
    main()
