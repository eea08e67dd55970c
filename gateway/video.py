"""Video input: validate a clip and decode a few keyframes (I-frames) spread across it.

Only keyframes are decoded (``skip_frame = "NONKEY"``): a keyframe decodes on
its own, so the decoder never reconstructs the P/B frames between them, which
is most of the work of a full decode (bench/bench_video.py measures it).

Sampling rule (TSN-style segments): the clip is cut into ``num_frames`` equal
segments and each segment's centre is a target time. Every target takes the
keyframe closest to it; a keyframe serves at most one target.

Fewer keyframes than targets (e.g. a 10 s clip with a single IDR frame at 0):
targets that found no keyframe of their own are filled by decoding the actual
frame at the target time (decoding forward from the keyframe before it, P/B
frames included, one pass when targets share a keyframe), but only while that costs at most
``VideoLimits.max_fill_frames`` decoded frames in total. Past that budget the
clip is represented by its distinct keyframes alone, so fewer frames than asked
come back (never none: a clip with a decodable video stream has a keyframe).

Bad input (empty, not a video, an image, truncated or corrupt, too large, too
long) raises ``InvalidInput`` naming the problem. The work is bounded by the
byte, duration, pixel, keyframe and fill limits, so no input makes it hang.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO

import av
import av.error
import numpy as np

from services.common.errors import InvalidInput

# FFmpeg demuxers for still images (a JPEG opens as a one-frame "video" stream).
_IMAGE_DEMUXERS = ("_pipe", "image2", "gif", "apng", "webp")
# Text formats that make FFmpeg open other files or URLs (playlists, concat
# lists): never let uploaded bytes point the gateway at files or the network.
_REFERENCING_PREFIXES = (b"#EXTM3U", b"ffconcat", b"[Playlist]", b"<?xml", b"#EXT-X")


@dataclass
class VideoLimits:
    """What a clip may cost: bytes, length, frame size, keyframes scanned, fill decodes."""

    max_bytes: int = 512 * 1024 * 1024
    # Short-video platforms cap uploads at minutes; an hour is generous.
    max_duration_s: float = 3600.0
    # 8K UHD is 33.2 Mpx.
    max_pixels: int = 36_000_000
    # Keyframes decoded while scanning (one per second for an hour, with margin).
    max_keyframes: int = 7200
    # Non-key frames decoded in total to fill targets that have no keyframe.
    max_fill_frames: int = 300


@dataclass
class SampledFrame:
    """One analysed frame: seconds from the start of the clip, HxWx3 uint8 RGB pixels."""

    timestamp_s: float
    rgb: np.ndarray


@dataclass
class DecodedVideo:
    duration_s: float
    width: int
    height: int
    codec: str
    fps: float
    keyframes_decoded: int
    frames: list[SampledFrame] = field(default_factory=list)


# The clip: bytes in memory, or a seekable binary file (a spilled upload).
VideoSource = bytes | IO[bytes]


def _reader(data: VideoSource) -> tuple[IO[bytes], int]:
    """A file object over ``data`` positioned at 0, and its size in bytes."""
    if isinstance(data, bytes):
        return io.BytesIO(data), len(data)
    size = data.seek(0, io.SEEK_END)
    data.seek(0)
    return data, size


def _open(data: VideoSource, limits: VideoLimits) -> av.container.InputContainer:
    reader, size = _reader(data)
    if size == 0:
        raise InvalidInput("video is empty (0 bytes)")
    if size > limits.max_bytes:
        raise InvalidInput(f"video is {size} bytes: over the {limits.max_bytes}-byte limit")
    head = reader.read(4096)
    reader.seek(0)
    if head.lstrip()[:16].startswith(_REFERENCING_PREFIXES):
        raise InvalidInput("video bytes are a playlist or text file, not a video container")
    try:
        container = av.open(reader, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise InvalidInput(
            f"bytes are not a readable video container (truncated or not a video?): {exc}"
        ) from exc
    fmt = container.format.name
    if any(marker in fmt for marker in _IMAGE_DEMUXERS):
        container.close()
        raise InvalidInput(
            f"bytes are a still image ({fmt.removesuffix('_pipe')}), not a video: send "
            "it to Analyze"
        )
    return container


def _stream_facts(
    container: av.container.InputContainer, limits: VideoLimits
) -> av.video.stream.VideoStream:
    """The clip's video stream, validated against the limits."""
    if not container.streams.video:
        kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["none"]
        raise InvalidInput(f"container has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.width <= 0 or ctx.height <= 0:
        raise InvalidInput(
            f"video stream has no frame size ({ctx.width}x{ctx.height}): corrupt header?"
        )
    if ctx.width * ctx.height > limits.max_pixels:
        raise InvalidInput(
            f"video frames are {ctx.width}x{ctx.height}: over the {limits.max_pixels}-pixel limit"
        )
    if not stream.time_base:
        raise InvalidInput("video stream has no time base: cannot place frames in time")
    return stream


def _seconds(pts: int, stream: av.video.stream.VideoStream) -> float:
    """A pts of ``stream`` in seconds (the time base was checked in ``_stream_facts``)."""
    return float(pts * (stream.time_base or Fraction(1)))


@dataclass
class _PacketIndex:
    """What demuxing alone (no decoding) tells about the clip: its time span and keyframe
    positions."""

    start_s: float
    duration_s: float
    keyframe_pts: list[int]
    keyframe_s: list[float]


def _index_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: VideoLimits
) -> _PacketIndex:
    """Walk the packets (cheap: no decoding) for keyframe times and the real duration.

    Container metadata can lie or be missing (raw H.264, some MPEG-TS); the
    packets cannot, and reading them bounds the keyframe scan before any decoding.
    """
    first: float | None = None
    end = 0.0
    key_pts: list[int] = []
    untimed = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None or not packet.time_base:
                untimed += 1
                continue
            t = float(packet.pts * packet.time_base)
            first = t if first is None else min(first, t)
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if packet.is_keyframe:
                key_pts.append(packet.pts)
                if len(key_pts) > limits.max_keyframes:
                    raise InvalidInput(
                        f"video has more than {limits.max_keyframes} keyframes: over the limit"
                    )
    except av.error.FFmpegError as exc:
        raise InvalidInput(f"video is corrupt or truncated: {exc}") from exc
    if first is None:
        if untimed:
            raise InvalidInput(
                "video stream has no timestamps (a raw elementary stream?): send it "
                "in a container such as MP4, MKV or MPEG-TS"
            )
        raise InvalidInput("video stream has no packets (empty or truncated clip)")
    if not key_pts:
        raise InvalidInput(
            "video stream has no keyframe (corrupt, or cut from the middle of a stream)"
        )
    duration = end - first
    if not math.isfinite(duration) or duration < 0:
        raise InvalidInput(f"video has an invalid duration ({duration})")
    if duration > limits.max_duration_s:
        raise InvalidInput(
            f"video is {duration:.0f} s long: over the {limits.max_duration_s:.0f}-second limit"
        )
    key_pts.sort()
    return _PacketIndex(first, duration, key_pts, [_seconds(p, stream) - first for p in key_pts])


def _targets(duration: float, count: int) -> list[float]:
    """Centres of ``count`` equal segments of the clip (seconds from the start)."""
    return [duration * (i + 0.5) / count for i in range(count)]


def _assign(keyframe_times: list[float], targets: list[float]) -> dict[int, int]:
    """target index -> keyframe index; each keyframe serves at most one target.

    Targets claim keyframes in order of closeness (greedy on distance), so with
    fewer keyframes than targets the keyframes go to the targets they are
    nearest to and the remaining targets stay unassigned (filled or dropped).
    """
    pairs = sorted(
        (abs(k - t), ti, ki) for ti, t in enumerate(targets) for ki, k in enumerate(keyframe_times)
    )
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for _, ti, ki in pairs:
        if ti not in chosen and ki not in used:
            chosen[ti] = ki
            used.add(ki)
    return chosen


def _decode_keyframes(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    start: float,
    wanted: dict[int, int],
) -> tuple[int, dict[int, SampledFrame]]:
    """Decode keyframes only; convert to RGB those whose pts is in ``wanted`` (pts -> target index).

    Only packets flagged as keyframes reach the decoder (plus the final empty
    packet that flushes it), and ``skip_frame = "NONKEY"`` drops any non-key
    frame inside them: decoders that ignore ``skip_frame`` (FFmpeg's VP9) still
    do keyframe-only work, and the ones that honour it skip even parsing the rest.
    """
    stream.codec_context.skip_frame = "NONKEY"
    decoded = 0
    out: dict[int, SampledFrame] = {}
    try:
        for packet in container.demux(stream):
            if not (packet.is_keyframe or packet.size == 0):
                continue
            for frame in packet.decode():
                decoded += 1
                pts = frame.pts
                ti = wanted.get(pts) if pts is not None else None
                if pts is not None and ti is not None:
                    out[ti] = SampledFrame(
                        _seconds(pts, stream) - start, frame.to_ndarray(format="rgb24")
                    )
    except av.error.FFmpegError as exc:
        raise InvalidInput(
            f"video is corrupt or truncated (after {decoded} keyframe(s)): {exc}"
        ) from exc
    return decoded, out


def _fill(
    data: VideoSource, targets: dict[int, float], index: _PacketIndex, limits: VideoLimits
) -> dict[int, SampledFrame]:
    """Decode the real frames at ``targets`` (target index -> seconds), within the fill budget.

    Targets are visited in time order; the decoder seeks to the keyframe before a
    target only when that keyframe lies ahead of where it already is, otherwise
    it keeps decoding forward (a clip with one keyframe is one forward pass).
    """
    found: dict[int, SampledFrame] = {}
    budget = limits.max_fill_frames
    with av.open(_reader(data)[0], mode="r", metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        frames: Iterator[av.VideoFrame] | None = None
        position = -math.inf
        try:
            for ti, target in sorted(targets.items(), key=lambda item: item[1]):
                before = [k for k, t in enumerate(index.keyframe_s) if t <= target + 1e-6]
                key = before[-1] if before else 0
                if frames is None or index.keyframe_s[key] > position:
                    container.seek(index.keyframe_pts[key], stream=stream, backward=True)
                    frames = container.decode(stream)
                for frame in frames:
                    budget -= 1
                    if budget < 0:
                        return found
                    if frame.pts is None:
                        continue
                    position = _seconds(frame.pts, stream) - index.start_s
                    if position >= target - 1e-6:
                        found[ti] = SampledFrame(position, frame.to_ndarray(format="rgb24"))
                        break
        except av.error.FFmpegError:
            pass  # the keyframe pass read the clip cleanly; keep what was filled
    return found


def decode_keyframes(
    data: VideoSource, num_frames: int = 3, limits: VideoLimits | None = None
) -> DecodedVideo:
    """Validate ``data`` and sample up to ``num_frames`` frames across it (keyframes first; see
    module doc)."""
    limits = limits or VideoLimits()
    if num_frames < 1:
        raise InvalidInput(f"num_frames must be at least 1, got {num_frames}")
    with _open(data, limits) as container:
        stream = _stream_facts(container, limits)
        ctx = stream.codec_context
        width, height, codec = ctx.width, ctx.height, ctx.name
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        index = _index_packets(container, stream, limits)
    targets = _targets(index.duration_s, num_frames)
    assigned = _assign(index.keyframe_s, targets)
    # A fresh demuxer for the decode pass: seeking back is not reliable in every container.
    with _open(data, limits) as container:
        stream = container.streams.video[0]
        wanted = {index.keyframe_pts[ki]: ti for ti, ki in assigned.items()}
        keyframes_decoded, frames = _decode_keyframes(container, stream, index.start_s, wanted)
    if keyframes_decoded == 0:
        raise InvalidInput("video stream has no decodable keyframe (corrupt or truncated?)")
    # Targets left without a keyframe of their own are decoded for real, within the fill budget.
    missing = {ti: targets[ti] for ti in range(num_frames) if ti not in frames}
    if missing:
        frames.update(_fill(data, missing, index, limits))
    if not frames:
        raise InvalidInput("video has no frame that could be decoded")
    # A filled target can land on a keyframe another target already took: analyse each frame once.
    unique = {round(f.timestamp_s, 6): f for f in frames.values()}
    ordered = [unique[t] for t in sorted(unique)]
    return DecodedVideo(index.duration_s, width, height, codec, fps, keyframes_decoded, ordered)


def decode_all_frames(data: VideoSource, limits: VideoLimits | None = None) -> int:
    """Decode every frame to RGB (the baseline keyframe-only decoding is measured against); returns
    the count."""
    limits = limits or VideoLimits()
    count = 0
    with _open(data, limits) as container:
        stream = _stream_facts(container, limits)
        try:
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                count += 1
        except av.error.FFmpegError as exc:
            raise InvalidInput(
                f"video is corrupt or truncated (after {count} frame(s)): {exc}"
            ) from exc
    return count
