"""Slow, silent, lying and large video uploads against a real gateway process (plus classify).

The gateway runs as its own process so its RSS can be read from /proc while
uploads are in progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support import encode
from tools.make_sample_video import video_bytes
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

MIB = 1024 * 1024
IDLE_TIMEOUT_S = 3.0
MAX_BYTES = 48 * MIB
IN_PROGRESS = 16
SPILL = 64 * 1024  # small, so the real clip below goes through a temporary file
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 8 * MIB)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    settings = {
        "upload_idle_timeout_s": IDLE_TIMEOUT_S,
        "video_max_bytes": MAX_BYTES,
        "upload_max_in_progress": IN_PROGRESS,
        "upload_spill_bytes": SPILL,
    }
    mesh = LocalMesh(
        services=["classify"],
        log_dir=tmp_path_factory.mktemp("logs"),
        extra_args={"gateway": [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]},
    )
    try:
        mesh.start()
        assert not mesh.failed, mesh.failed
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture
async def stub(mesh: LocalMesh) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with grpc.aio.insecure_channel(mesh.gateway_address, options=CHANNEL_OPTIONS) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def header(total_size: int = 0) -> gateway_pb2.AnalyzeVideoRequest:
    return gateway_pb2.AnalyzeVideoRequest(
        header=gateway_pb2.VideoUploadHeader(
            features=[common_pb2.FEATURE_CLASSIFY], total_size=total_size
        )
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def send(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    messages: Iterator[gateway_pb2.AnalyzeVideoRequest],
    close: bool = True,
) -> grpc.aio.AioRpcError:
    """Write ``messages`` until the gateway ends the call; returns the status it ended with.

    Paced, and stopping once the call is over: a write still in progress when
    the server ends the call makes the grpc client report a generic INTERNAL
    instead of the server's status.
    """
    call = stub.AnalyzeVideo(timeout=60)
    try:
        for message in messages:
            if call.done():
                break
            await call.write(message)
            await asyncio.sleep(0.01)
        if close and not call.done():
            await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the upload was accepted")


async def _silent_stream(
    stub: gateway_pb2_grpc.GatewayServiceStub, opened: list[float]
) -> tuple[grpc.aio.StreamUnaryCall, bool]:
    """Header + 1 KB, then silence. Returns the call and whether the gateway ended it mid-write."""
    call = stub.AnalyzeVideo(timeout=60)
    try:
        await call.write(header())
        await call.write(gateway_pb2.AnalyzeVideoRequest(chunk=b"\0" * 1024))
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        # Refused already (over the upload budget); the grpc client may then report a
        # generic INTERNAL for the interrupted write instead of the gateway's status.
        return call, True
    opened.append(time.monotonic())
    return call, False


async def _status(call: grpc.aio.StreamUnaryCall) -> grpc.aio.AioRpcError | None:
    try:
        await asyncio.wait_for(call, 30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_silent_streams_do_not_block_analyze_and_are_cut_when_idle(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea: object
) -> None:
    opened: list[float] = []
    streams = await asyncio.gather(*(_silent_stream(stub, opened) for _ in range(256)))
    # Analyze is served while 256 streams sit silent (before: RESOURCE_EXHAUSTED for all).
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=encode(chelsea)),  # type: ignore[arg-type]
        features=[common_pb2.FEATURE_CLASSIFY],
        options=gateway_pb2.AnalyzeOptions(no_cache=True),
    )
    for _ in range(3):
        reply = await stub.Analyze(request, timeout=30)
        assert not reply.errors and reply.classify.labels
    errors = await asyncio.gather(*(_status(call) for call, _ in streams))
    ended = time.monotonic()
    interrupted = sum(1 for _, mid_write in streams if mid_write)
    codes = [
        e.code() if e else None
        for e, (_, mid_write) in zip(errors, streams, strict=True)
        if not mid_write
    ]
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) + interrupted
    cut = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert refused + cut == 256, set(map(str, codes))
    # Only the upload budget's worth were held; the rest were refused at once.
    assert cut <= IN_PROGRESS and refused >= 256 - IN_PROGRESS
    assert cut > 0, "streams within the budget are held until the idle timeout"
    stalled = [e for e in errors if e and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED]
    assert all("stalled" in (e.details() or "") for e in stalled)
    # Cut after the idle timeout, not held until the caller's 60 s deadline.
    assert ended - max(opened) < IDLE_TIMEOUT_S + 10


@pytest.mark.parametrize(
    ("total_size", "sent", "message"),
    [
        (-5, 1000, "total_size"),
        (500, 1000, "more than the 500 bytes"),
        (5000, 1000, "ended after 1000 bytes"),
        (MAX_BYTES + 1, 10, "over the"),
    ],
    ids=["negative", "oversending", "undersending", "announced-too-large"],
)
async def test_total_size_is_enforced_both_ways(
    stub: gateway_pb2_grpc.GatewayServiceStub, total_size: int, sent: int, message: str
) -> None:
    error = await send(
        stub, iter([header(total_size), gateway_pb2.AnalyzeVideoRequest(chunk=b"\1" * sent)])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")


async def test_oversized_upload_is_refused_as_it_arrives(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    pulled = 0

    def messages() -> Iterator[gateway_pb2.AnalyzeVideoRequest]:
        nonlocal pulled
        yield header()  # size unknown: the per-upload limit is checked chunk by chunk
        for _ in range(200):  # 200 MiB offered, 48 MiB allowed
            pulled += 1
            yield gateway_pb2.AnalyzeVideoRequest(chunk=b"\2" * MIB)

    start = time.monotonic()
    error = await send(stub, messages())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_BYTES}-byte limit" in (error.details() or "")
    assert pulled < 100, "the upload must be refused once past the limit, not read to the end"
    assert time.monotonic() - start < 30


async def test_rss_stays_bounded_with_large_uploads_in_progress(
    stub: gateway_pb2_grpc.GatewayServiceStub, mesh: LocalMesh
) -> None:
    pid = mesh.processes["gateway"].process.pid
    before = rss_mb(pid)
    uploads, each = 5, 40  # 200 MiB held by stalled uploads
    calls = []
    for _ in range(uploads):
        call = stub.AnalyzeVideo(timeout=120)
        await call.write(header(each * MIB + 1))  # one byte never comes: the upload stays open
        for _ in range(each):
            await call.write(gateway_pb2.AnalyzeVideoRequest(chunk=b"\3" * MIB))
        calls.append(call)
    await asyncio.sleep(0.5)
    during = rss_mb(pid)
    for call in calls:
        call.cancel()
    # Memory holds at most spill_bytes per upload; the rest is in temporary files.
    assert during - before < uploads * SPILL / MIB + 60, (before, during)


async def test_a_real_clip_still_analyses_after_spilling_to_disk(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    data = video_bytes(seconds=3, size=(320, 180), fps=15, gop=15)
    assert len(data) > SPILL

    async def messages() -> AsyncIterator[gateway_pb2.AnalyzeVideoRequest]:
        yield header(len(data))
        for i in range(0, len(data), 4096):
            yield gateway_pb2.AnalyzeVideoRequest(chunk=data[i : i + 4096])

    reply = await stub.AnalyzeVideo(messages(), timeout=60)
    assert not reply.errors and reply.video.frames_analyzed == 3 and reply.tags
