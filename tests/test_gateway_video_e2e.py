"""AnalyzeVideo end to end: a client-streamed clip through the gateway to the real classify + hash
services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import skimage.data

from gateway.main import DEFINITION as GATEWAY
from services.classify.main import DEFINITION as CLASSIFY
from services.hash.main import DEFINITION as HASH
from tests.support import encode, running_service
from tools.make_sample_video import make_video
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def cat_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "cat.mp4"
    return make_video(
        path, seconds=3, size=(480, 320), fps=15, gop=15, scenes=[skimage.data.chelsea]
    )


# Frames as one call per frame and service, and as one batched call (ClassifyBatch).
@pytest.fixture(scope="module", params=[False, True], ids=["per-frame", "batched"])
async def stub(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    data_dir = str(tmp_path_factory.mktemp("hash"))
    async with (
        running_service(CLASSIFY) as classify,
        running_service(HASH, {"storage": {"data_dir": data_dir}}) as hashing,
    ):
        services = {"classify": [classify.address], "hash": [hashing.address]}
        config = {"services": services, "video_batch_calls": request.param}
        async with running_service(GATEWAY, config) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                yield gateway_pb2_grpc.GatewayServiceStub(channel)


def upload(
    data: bytes, features: list[int], num_frames: int = 3, **hash_options: object
) -> Iterator[gateway_pb2.AnalyzeVideoRequest]:
    header = gateway_pb2.VideoUploadHeader(
        features=features, num_frames=num_frames, total_size=len(data)
    )
    for key, value in hash_options.items():
        setattr(header.options.hash, key, value)
    yield gateway_pb2.AnalyzeVideoRequest(header=header)
    for i in range(0, len(data), CHUNK):
        yield gateway_pb2.AnalyzeVideoRequest(chunk=data[i : i + CHUNK])


async def test_clip_gets_consensus_tags_frames_and_one_video_hash(
    stub: gateway_pb2_grpc.GatewayServiceStub, cat_clip: Path
) -> None:
    data = cat_clip.read_bytes()
    features = [common_pb2.FEATURE_CLASSIFY, common_pb2.FEATURE_HASH]
    reply = await stub.AnalyzeVideo(
        upload(data, features, collection="clips", add_id="cat"), timeout=60
    )
    assert not reply.errors, reply.errors
    assert reply.video.codec == "h264" and (reply.video.width, reply.video.height) == (480, 320)
    assert reply.video.duration_s == pytest.approx(3.0, abs=0.2)
    assert reply.video.frames_analyzed == 3 == len(reply.frames)
    stamps = [f.timestamp_s for f in reply.frames]
    assert stamps == sorted(stamps)
    classify_tags = [t for t in reply.tags if t.source == "classify"]
    assert classify_tags[0].name == "animal/cat", [t.name for t in classify_tags[:3]]
    assert reply.hash.code.bits > 0 and reply.hash.added
    # The same clip again finds itself in the collection at distance 0.
    again = await stub.AnalyzeVideo(
        upload(data, [common_pb2.FEATURE_HASH], collection="clips"), timeout=60
    )
    assert [(m.id, m.distance) for m in again.hash.near_duplicates[:1]] == [("cat", 0)]


async def test_an_image_and_its_jpeg_copy_meet_in_the_exact_tier_and_a_clip_has_none(
    stub: gateway_pb2_grpc.GatewayServiceStub, cat_clip: Path
) -> None:
    features = [common_pb2.FEATURE_HASH]

    async def analyze(quality: int, add_id: str = "") -> gateway_pb2.AnalyzeResponse:
        options = gateway_pb2.AnalyzeOptions()
        options.hash.collection, options.hash.add_id = "photos", add_id
        jpeg = encode(skimage.data.coffee(), quality=quality)
        request = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=jpeg), features=features, options=options
        )
        return await stub.Analyze(request, timeout=60)

    first = await analyze(95, add_id="coffee")
    assert first.hash.added and first.hash.exact_code.bits == 256
    copy = await analyze(30)
    top = copy.hash.near_duplicates[0]
    assert top.id == "coffee" and top.HasField("exact_distance") and top.exact_distance <= 31
    clip = await stub.AnalyzeVideo(upload(cat_clip.read_bytes(), features), timeout=60)
    assert clip.hash.code.bits > 0 and not clip.hash.HasField("exact_code")


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("a JPEG", lambda clip: encode(skimage.data.coffee())),
        ("random bytes", lambda clip: bytes(range(256)) * 64),
        ("truncated MP4", lambda clip: clip.read_bytes()[: len(clip.read_bytes()) // 4]),
    ],
)
async def test_bad_videos_are_invalid_argument(
    stub: gateway_pb2_grpc.GatewayServiceStub, cat_clip: Path, name: str, payload: object
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AnalyzeVideo(
            upload(payload(cat_clip), [common_pb2.FEATURE_CLASSIFY]), timeout=60
        )  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
    assert info.value.details()


async def test_upload_without_header_or_bytes(stub: gateway_pb2_grpc.GatewayServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AnalyzeVideo(iter([gateway_pb2.AnalyzeVideoRequest(chunk=b"abc")]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in (
        info.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AnalyzeVideo(
            iter([gateway_pb2.AnalyzeVideoRequest(header=gateway_pb2.VideoUploadHeader())]),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no bytes" in (
        info.value.details() or ""
    )
