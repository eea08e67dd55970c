"""Gateway end to end, in-process: a real classify service with its real model behind a real
gateway."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from gateway.main import DEFINITION as GATEWAY
from services.classify.main import DEFINITION as CLASSIFY
from services.common.net import free_port
from tests.support import encode, running_service
from visionmesh import features
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

CAT_CLASSES = {
    "tabby, tabby cat",
    "tiger cat",
    "Egyptian cat",
    "Persian cat",
    "Siamese cat, Siamese",
    "lynx, catamount",
}


@pytest.fixture(scope="module")
async def gateway_address() -> AsyncIterator[str]:
    async with running_service(CLASSIFY) as classify:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens here: those features must fail alone
        services = {spec.name: [dead] for spec in features.all_features()}
        services["classify"] = [classify.address]
        overrides = {"services": services, "retry_attempts": 2, "server": {"reflection": True}}
        async with running_service(GATEWAY, overrides) as gateway:
            yield gateway.address


@pytest.fixture(scope="module")
async def stub(gateway_address: str) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def request(data: bytes, *features: int, **options: object) -> gateway_pb2.AnalyzeRequest:
    return gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=data),
        features=list(features),
        options=gateway_pb2.AnalyzeOptions(**options),
    )


async def test_cat_photo_gets_cat_labels(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea_jpeg: bytes
) -> None:
    reply = await stub.Analyze(
        request(chelsea_jpeg, common_pb2.FEATURE_CLASSIFY, no_cache=True), timeout=30
    )
    assert not reply.errors
    top = [label.name for label in reply.classify.labels[:3]]
    assert set(top) <= CAT_CLASSES, top
    assert reply.tags, "the merged tag list must not be empty"
    assert [t.score for t in reply.tags] == sorted((t.score for t in reply.tags), reverse=True)
    assert reply.image.width == 451 and reply.image.height == 300 and reply.image.format == "JPEG"


async def test_absent_services_are_per_feature_errors(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea_jpeg: bytes
) -> None:
    reply = await stub.Analyze(request(chelsea_jpeg, no_cache=True), timeout=30)
    assert reply.classify.labels, "the working feature still answers"
    failed = {e.feature: e.code for e in reply.errors}
    assert failed == {
        spec.enum: "UNAVAILABLE" for spec in features.all_features() if spec.name != "classify"
    }


async def test_repeated_image_is_served_from_the_cache(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea: np.ndarray
) -> None:
    data = encode(chelsea[::-1])  # an image no other test sends
    first = await stub.Analyze(request(data, common_pb2.FEATURE_CLASSIFY), timeout=30)
    second = await stub.Analyze(request(data, common_pb2.FEATURE_CLASSIFY), timeout=30)
    assert not first.cached and second.cached
    assert [t.name for t in first.tags] == [t.name for t in second.tags]


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        ("zero bytes", lambda jpeg: b"", "empty"),
        ("truncated JPEG", lambda jpeg: jpeg[: len(jpeg) // 3], "truncated"),
        (
            "random bytes",
            lambda jpeg: (
                np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
            ),
            "not a recognised image",
        ),
        (
            "text file",
            lambda jpeg: b"just some text, not a picture\n" * 20,
            "not a recognised image",
        ),
        ("20000x20000 PNG bomb", lambda jpeg: _bomb(), "decompression-bomb"),
    ],
)
async def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    chelsea_jpeg: bytes,
    name: str,
    make: object,
    needle: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Analyze(request(make(chelsea_jpeg), common_pb2.FEATURE_CLASSIFY), timeout=30)  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert needle in (info.value.details() or ""), info.value.details()
    ok = await stub.Analyze(request(chelsea_jpeg, common_pb2.FEATURE_CLASSIFY), timeout=30)
    assert ok.classify.labels


async def test_missing_image_and_unknown_feature(stub: gateway_pb2_grpc.GatewayServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Analyze(gateway_pb2.AnalyzeRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no image" in (
        info.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Analyze(
            gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=b"x"), features=[42]),
            timeout=10,
        )  # type: ignore[list-item]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown feature" in (
        info.value.details() or ""
    )


async def test_batch_answers_each_image_with_per_image_errors(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea_jpeg: bytes
) -> None:
    images = [
        common_pb2.Image(encoded=chelsea_jpeg),
        common_pb2.Image(encoded=b"nope"),
        common_pb2.Image(encoded=chelsea_jpeg),
    ]
    reply = await stub.AnalyzeBatch(
        gateway_pb2.AnalyzeBatchRequest(images=images, features=[common_pb2.FEATURE_CLASSIFY]),
        timeout=60,
    )
    by_index = {item.index: item for item in reply.items}
    assert sorted(by_index) == [0, 1, 2]
    assert by_index[1].error.code == "INVALID_ARGUMENT"
    assert by_index[0].response.classify.labels and by_index[2].response.classify.labels


async def test_batch_stream_returns_every_item(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea_jpeg: bytes
) -> None:
    images = [common_pb2.Image(encoded=chelsea_jpeg)] * 3 + [common_pb2.Image(encoded=b"")]
    call = stub.AnalyzeBatchStream(
        gateway_pb2.AnalyzeBatchStreamRequest(
            images=images, features=[common_pb2.FEATURE_CLASSIFY]
        ),
        timeout=60,
    )
    items = [reply.item async for reply in call]
    assert sorted(i.index for i in items) == [0, 1, 2, 3]
    assert [i.error.code for i in items if i.index == 3] == ["INVALID_ARGUMENT"]


async def test_health_and_reflection(gateway_address: str) -> None:
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "visionmesh.v1.GatewayService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"visionmesh.v1.GatewayService", "grpc.health.v1.Health"} <= names


async def test_in_flight_limit_answers_resource_exhausted(chelsea_jpeg: bytes) -> None:
    async with running_service(CLASSIFY) as classify:
        async with running_service(
            GATEWAY, {"services": {"classify": [classify.address]}, "max_in_flight": 1}
        ) as gateway:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                calls = [
                    stub.Analyze(
                        request(chelsea_jpeg, common_pb2.FEATURE_CLASSIFY, no_cache=True),
                        timeout=30,
                    )
                    for _ in range(6)
                ]
                results = await asyncio.gather(*calls, return_exceptions=True)
                refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
                assert refused and all(
                    r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused
                )
                assert "in flight" in (refused[0].details() or "")
                assert any(
                    isinstance(r, gateway_pb2.AnalyzeResponse) and r.classify.labels
                    for r in results
                )
                # Nothing is stuck: once the burst is over, calls go through again.
                ok = await stub.Analyze(
                    request(chelsea_jpeg, common_pb2.FEATURE_CLASSIFY, no_cache=True), timeout=30
                )
                assert ok.classify.labels


async def test_raw_pixels_and_oversized_images_are_analysed_alike(
    stub: gateway_pb2_grpc.GatewayServiceStub, chelsea: np.ndarray
) -> None:
    from services.common.protos import rgb_to_image

    raw = await stub.Analyze(
        gateway_pb2.AnalyzeRequest(
            image=rgb_to_image(chelsea), features=[common_pb2.FEATURE_CLASSIFY]
        ),
        timeout=30,
    )
    assert raw.image.format == "RAW" and raw.classify.labels[0].name in CAT_CLASSES
    # Past fanout_max_side (2048) the gateway sends downsized pixels instead of the original bytes.
    big = np.asarray(Image.fromarray(chelsea).resize((2706, 1800)))
    resized = await stub.Analyze(request(encode(big), common_pb2.FEATURE_CLASSIFY), timeout=30)
    assert resized.image.width == 2706 and resized.classify.labels[0].name in CAT_CLASSES
