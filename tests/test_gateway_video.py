"""Keyframe decoding of real H.264 clips encoded from scikit-image photos, and its refusals."""

from __future__ import annotations

import io
import re
from fractions import Fraction

import av
import numpy as np
import pytest

from gateway.video import VideoLimits, decode_all_frames, decode_keyframes
from services.common.errors import InvalidInput
from tools.make_sample_video import video_bytes

# 4 s at 15 fps, a keyframe every second (0, 1, 2, 3), four scenes of one second each.
SECONDS, FPS, GOP, SIZE = 4, 15, 15, (320, 180)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return video_bytes(seconds=SECONDS, size=SIZE, fps=FPS, gop=GOP)


@pytest.fixture(scope="module")
def faststart_clip() -> bytes:
    return video_bytes(seconds=2, size=SIZE, fps=FPS, gop=5, faststart=True)


@pytest.fixture(scope="module")
def one_keyframe_clip() -> bytes:
    # GOP longer than the clip: a single IDR frame at t=0, then P frames only.
    return video_bytes(seconds=2, size=SIZE, fps=FPS, gop=600)


def test_samples_keyframes_across_the_clip(clip: bytes) -> None:
    video = decode_keyframes(clip, num_frames=3)
    assert (video.width, video.height) == SIZE
    assert video.codec == "h264"
    assert video.fps == pytest.approx(FPS)
    assert video.duration_s == pytest.approx(SECONDS, abs=0.1)
    assert video.keyframes_decoded == SECONDS  # one per second
    assert len(video.frames) == 3
    times = [f.timestamp_s for f in video.frames]
    assert times == sorted(times) and len(set(times)) == 3
    # Every sample is a real keyframe (whole seconds), spread over the clip.
    assert all(abs(t - round(t)) < 1e-6 for t in times)
    assert times[0] <= 1.0 and times[-1] >= 2.0
    for frame in video.frames:
        assert frame.rgb.shape == (SIZE[1], SIZE[0], 3) and frame.rgb.dtype == np.uint8


def test_samples_from_different_scenes_differ(clip: bytes) -> None:
    # Keyframes at 0 s and 3 s come from different photos (cat vs shop sign).
    video = decode_keyframes(clip, num_frames=4)
    assert [f.timestamp_s for f in video.frames] == pytest.approx([0.0, 1.0, 2.0, 3.0])
    first, last = (f.rgb.astype(np.float32) for f in (video.frames[0], video.frames[-1]))
    assert np.abs(first - last).mean() > 20


def test_one_frame_takes_the_middle_keyframe(clip: bytes) -> None:
    video = decode_keyframes(clip, num_frames=1)
    assert len(video.frames) == 1
    assert video.frames[0].timestamp_s in (1.0, 2.0)  # nearest keyframes to the 2 s centre


def test_keyframe_frames_match_a_full_decode(clip: bytes) -> None:
    """The keyframe-only path returns exactly the pixels a normal decode gives at that time."""
    video = decode_keyframes(clip, num_frames=2)
    with av.open(io.BytesIO(clip), mode="r") as container:
        stream = container.streams.video[0]
        full = {
            round(float(f.time), 3): f.to_ndarray(format="rgb24") for f in container.decode(stream)
        }
    for frame in video.frames:
        np.testing.assert_array_equal(frame.rgb, full[round(frame.timestamp_s, 3)])


def test_fewer_keyframes_than_asked_fills_by_decoding(one_keyframe_clip: bytes) -> None:
    video = decode_keyframes(one_keyframe_clip, num_frames=3)
    assert video.keyframes_decoded == 1
    times = [f.timestamp_s for f in video.frames]
    # Targets: segment centres 1/3, 1, 5/3 s. The keyframe (0 s) serves the first; the rest are
    # decoded for real.
    assert len(times) == 3 and times[0] == 0.0
    assert times[1] == pytest.approx(1.0, abs=1 / FPS) and times[2] == pytest.approx(
        5 / 3, abs=1 / FPS
    )


def test_fill_budget_bounds_the_work(one_keyframe_clip: bytes) -> None:
    # No budget for non-key frames: the clip is represented by its one keyframe.
    video = decode_keyframes(one_keyframe_clip, num_frames=3, limits=VideoLimits(max_fill_frames=0))
    assert [f.timestamp_s for f in video.frames] == [0.0]
    # A budget that reaches the second target only.
    video = decode_keyframes(
        one_keyframe_clip, num_frames=3, limits=VideoLimits(max_fill_frames=16)
    )
    assert len(video.frames) == 2


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".ts", "libx264"), (".mkv", "libx264"), (".webm", "libvpx-vp9"), (".avi", "mpeg4")],
)
def test_other_containers_and_codecs(suffix: str, codec: str) -> None:
    data = video_bytes(seconds=2, size=SIZE, fps=FPS, gop=5, suffix=suffix, codec=codec)
    video = decode_keyframes(data, num_frames=3)
    assert video.duration_s == pytest.approx(2.0, abs=0.15)
    # A keyframe every 5th of 30 frames (mpeg4's encoder adds a few at scene cuts): keyframe-only
    # work,
    # even with FFmpeg's VP9 decoder, which ignores skip_frame.
    assert 6 <= video.keyframes_decoded < 15
    assert len(video.frames) == 3 and [f.timestamp_s for f in video.frames] == sorted(
        f.timestamp_s for f in video.frames
    )


def test_raw_elementary_stream_is_refused_clearly() -> None:
    """A bare H.264 stream carries no timestamps: sampling by time is impossible, so say so."""
    mp4 = video_bytes(seconds=1, size=SIZE, fps=FPS, gop=5)
    raw = io.BytesIO()
    with (
        av.open(io.BytesIO(mp4), mode="r") as source,
        av.open(raw, mode="w", format="h264") as sink,
    ):
        out = sink.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = out
                sink.mux(packet)
    with pytest.raises(InvalidInput, match="no timestamps"):
        decode_keyframes(raw.getvalue(), num_frames=3)


def test_full_decode_counts_every_frame(clip: bytes) -> None:
    assert decode_all_frames(clip) == SECONDS * FPS


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 8000), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda clip, jpeg, fs: b"", "empty"),
        (lambda clip, jpeg, fs: jpeg, "still image (jpeg)"),
        (lambda clip, jpeg, fs: np.random.default_rng(0).bytes(20_000), "not a readable video"),
        (lambda clip, jpeg, fs: b"just some text, no video here\n" * 10, "not a readable video"),
        (lambda clip, jpeg, fs: b"#EXTM3U\n#EXTINF:10,\nhttp://example.invalid/a.ts\n", "playlist"),
        # Index at the end: cutting the file loses it.
        (lambda clip, jpeg, fs: clip[: len(clip) // 2], "not a readable video"),
        # Index first (streaming upload): the media data itself is cut short.
        (lambda clip, jpeg, fs: fs[: len(fs) * 2 // 3], "truncated"),
        (lambda clip, jpeg, fs: _audio_only(), "no video stream"),
    ],
    ids=[
        "empty",
        "jpeg",
        "random",
        "text",
        "playlist",
        "truncated",
        "truncated-faststart",
        "audio-only",
    ],
)
def test_bad_input_is_invalid_argument(
    clip: bytes, faststart_clip: bytes, chelsea_jpeg: bytes, make, message: str
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        decode_keyframes(make(clip, chelsea_jpeg, faststart_clip), num_frames=3)
    assert info.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (VideoLimits(max_bytes=1000), "over the 1000-byte limit"),
        (VideoLimits(max_duration_s=2.0), "over the 2-second limit"),
        (VideoLimits(max_pixels=320 * 100), "over the 32000-pixel limit"),
        (VideoLimits(max_keyframes=2), "more than 2 keyframes"),
    ],
)
def test_limits_refuse_oversized_clips(clip: bytes, limits: VideoLimits, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_keyframes(clip, num_frames=3, limits=limits)


def test_num_frames_must_be_positive(clip: bytes) -> None:
    with pytest.raises(InvalidInput, match="num_frames"):
        decode_keyframes(clip, num_frames=0)
