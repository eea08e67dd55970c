"""Encode sample H.264 MP4 clips from scikit-image photos (for tests, benchmarks and `make run`).

The clip is a slow pan-and-zoom over a sequence of real photos (Chelsea the cat,
a cup of coffee, the astronaut, a shop sign with Chinese and English text), one
scene after another, so keyframes taken from different parts of the clip show
different content. The GOP is fixed (scene-cut detection off) so the number and
position of keyframes is known: one every ``gop`` frames.

    .venv/bin/python -m tools.make_sample_video out.mp4 --seconds 10 --size 1280x720
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.video.stream
import numpy as np
import skimage.data
from PIL import Image


def _text_sign() -> np.ndarray:
    from tools.make_samples import (
        text_sign,
    )  # imported lazily: make_samples imports this module too

    return text_sign()


DEFAULT_SCENES: tuple[Callable[[], np.ndarray], ...] = (
    skimage.data.chelsea,
    skimage.data.coffee,
    skimage.data.astronaut,
    _text_sign,
)


def _pan_zoom(photo: Image.Image, progress: float, size: tuple[int, int]) -> np.ndarray:
    """The frame at ``progress`` (0..1) of a scene: a crop that shrinks (zoom in) and slides
    right."""
    width, height = photo.size
    out_w, out_h = size
    aspect = out_w / out_h
    # Largest crop of the output's aspect ratio that fits, zooming from 100 % to 80 % of it.
    crop_w = min(width, height * aspect) * (1.0 - 0.2 * progress)
    crop_h = crop_w / aspect
    left = (width - crop_w) * progress
    top = (height - crop_h) * 0.5
    box = (left, top, left + crop_w, top + crop_h)
    return np.asarray(photo.resize(size, Image.Resampling.BILINEAR, box=box))


def make_video(
    path: str | Path,
    seconds: float = 10,
    size: tuple[int, int] = (1280, 720),
    fps: int = 30,
    gop: int | None = None,
    scenes: Sequence[Callable[[], np.ndarray]] = DEFAULT_SCENES,
    crf: int = 23,
    faststart: bool = False,
    codec: str = "libx264",
) -> Path:
    """Write an H.264 (yuv420p) MP4 of ``seconds`` at ``fps`` with a keyframe every ``gop`` frames.

    ``gop`` defaults to two seconds of frames. ``size`` is (width, height); both
    must be even for yuv420p. ``faststart`` puts the index (moov) before the
    media data, as streaming uploads do. The container follows the file name
    (``.mp4``, ``.mkv``, ``.webm``, ``.ts``...); ``codec`` is any FFmpeg encoder
    PyAV bundles (``libx264``, ``libvpx-vp9``, ``mpeg4``). Returns the path written.
    """
    out = Path(path)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size {size} must have even width and height for yuv420p")
    gop = gop or 2 * fps
    photos = [Image.fromarray(make()).convert("RGB") for make in scenes]
    total = max(1, round(seconds * fps))
    container_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(out), mode="w", options=container_options) as container:
        x264 = {
            "preset": "veryfast",
            "crf": str(crf),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        stream = container.add_stream(
            codec, rate=Fraction(fps), options=x264 if codec == "libx264" else {}
        )
        if not isinstance(stream, av.video.stream.VideoStream):
            raise ValueError(f"codec {codec!r} is not a video encoder")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for index in range(total):
            position = index / total * len(photos)
            scene = min(int(position), len(photos) - 1)
            rgb = _pan_zoom(photos[scene], position - scene, size)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def video_bytes(
    seconds: float = 2,
    size: tuple[int, int] = (320, 180),
    fps: int = 15,
    gop: int | None = None,
    suffix: str = ".mp4",
    **kwargs: object,
) -> bytes:
    """A clip as bytes (encoded through a temporary file, since the MP4 muxer needs to seek)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / f"clip{suffix}"
        make_video(target, seconds=seconds, size=size, fps=fps, gop=gop, **kwargs)  # type: ignore[arg-type]
        return target.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--gop", type=int, default=None, help="frames between keyframes (default: 2 s)"
    )
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    print(make_video(args.path, seconds=args.seconds, size=(w, h), fps=args.fps, gop=args.gop))


if __name__ == "__main__":
    main()
