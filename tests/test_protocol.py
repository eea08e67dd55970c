"""The protocol edge on real servers: malformed bytes, option ranges, per-RPC sizes, reflection,
pixel budgets."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from gateway.main import DEFINITION as GATEWAY
from services.common import options
from services.common.errors import InvalidInput
from services.common.images import ImageLimits
from services.common.net import free_port
from services.common.protos import frames_to_rgb
from tests.support import running_service
from visionmesh.v1 import (
    classify_pb2,
    common_pb2,
    detect_pb2,
    face_pb2,
    gateway_pb2,
    hash_pb2,
    ocr_pb2,
)

ANALYZE = "/visionmesh.v1.GatewayService/Analyze"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
ROOT = Path(__file__).resolve().parent.parent
PROTO_MODULES = [classify_pb2, common_pb2, detect_pb2, face_pb2, gateway_pb2, hash_pb2, ocr_pb2]


@pytest.fixture(scope="module")
async def gateway_address() -> AsyncIterator[str]:
    # No feature service is needed: everything here is refused before a fan-out.
    dead = f"127.0.0.1:{free_port()}"
    services = {name: [dead] for name in ("classify", "ocr", "face", "hash")}
    async with running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway:
        yield gateway.address


async def _raw_call(address: str, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    """Send ``payload`` as the request bytes of ``method`` (no client-side serialisation)."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        call = channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(payload, timeout=10)
        return info.value


def _invalid_utf8_collection() -> bytes:
    # AnalyzeRequest.options (3) -> AnalyzeOptions.hash (4) -> HashOptions.collection (1) =
    # b"\xff\xfe"
    collection = b"\x0a\x02\xff\xfe"
    hash_options = b"\x22" + bytes([len(collection)]) + collection
    return b"\x1a" + bytes([len(hash_options)]) + hash_options


MALFORMED = {
    "random bytes": bytes(np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8)),
    "truncated length-delimited field": b"\x0a\xff\xff\xff\x0f\x01",
    "invalid wire type": b"\x0f\x00",
    "invalid UTF-8 in a string field": _invalid_utf8_collection(),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_request_bytes_are_invalid_argument(
    gateway_address: str, name: str
) -> None:
    error = await _raw_call(gateway_address, ANALYZE, MALFORMED[name])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
    assert "not a valid visionmesh.v1.AnalyzeRequest" in (error.details() or "")


async def test_malformed_bytes_to_the_health_service_are_invalid_argument(
    gateway_address: str,
) -> None:
    error = await _raw_call(gateway_address, HEALTH_CHECK, b"\x0a\x02\xff\xfe")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    # ... and a well-formed call still works on the same server.
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = await check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(
                    face=gateway_pb2.FaceOptions(max_faces=2**31 - 1)
                )
            ),
            "options.face.max_faces must be 0 (service default) or 1..1000, got 2147483647",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(face=gateway_pb2.FaceOptions(min_face_size=1e30))
            ),
            "options.face.min_face_size must be 0 (service default) or 10..20000",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(
                    ocr=gateway_pb2.OcrOptions(min_confidence=float("nan"))
                )
            ),
            "options.ocr.min_confidence must be 0..1, got nan",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(hash=gateway_pb2.HashOptions(k=-3))
            ),
            "options.hash.k must be 0 (service default) or 1..1000, got -3",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(hash=gateway_pb2.HashOptions(bits=100))
            ),
            "options.hash.bits must be 0 (service default) or one of 64, 128, 256, got 100",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(hash=gateway_pb2.HashOptions(max_distance=300))
            ),
            "options.hash.max_distance must be 0..256, got 300",
        ),
        (
            gateway_pb2.AnalyzeRequest(
                options=gateway_pb2.AnalyzeOptions(classify=gateway_pb2.ClassifyOptions(top_k=5000))
            ),
            "options.classify.top_k must be 0 (service default) or 1..1000, got 5000",
        ),
        (
            gateway_pb2.AnalyzeRequest(features=[common_pb2.FEATURE_OCR, 77]),
            "features: unknown feature value 77",
        ),
    ],
)
async def test_options_out_of_range_are_invalid_argument_naming_field_and_range(
    gateway_address: str, request_: gateway_pb2.AnalyzeRequest, needle: str
) -> None:
    request_.image.encoded = b"\x89PNG"  # never reached: the options are refused first
    error = await _raw_call(gateway_address, ANALYZE, request_.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (error.details() or ""), error.details()


def _request_types() -> list[Descriptor]:
    types = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            types.extend(m.input_type for m in service.methods)
    return types


def _reachable(descriptor: Descriptor, seen: dict[str, Descriptor]) -> None:
    if descriptor.full_name in seen:
        return
    seen[descriptor.full_name] = descriptor
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _reachable(field.message_type, seen)


def test_every_numeric_option_of_every_request_has_a_documented_range() -> None:
    seen: dict[str, Descriptor] = {}
    for request_type in _request_types():
        _reachable(request_type, seen)
    numeric = {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_DOUBLE,
    }
    missing = [
        f"{d.name}.{f.name}"
        for d in seen.values()
        if d.full_name.startswith("visionmesh.")
        for f in d.fields
        if f.type in numeric
        and f"{d.name}.{f.name}" not in options.RANGES
        and f"{d.name}.{f.name}" not in options.CHECKED_ELSEWHERE
    ]
    assert not missing, f"request fields without a documented range: {missing}"
    stale = [k for k in options.RANGES if k.split(".")[0] not in {d.name for d in seen.values()}]
    assert not stale, f"ranges for messages no request carries: {stale}"


def _field_comment(text: str, message: str, field: str) -> str:
    block = text.split(f"message {message} {{", 1)[1].split("\n}", 1)[0].splitlines()
    index = next(i for i, line in enumerate(block) if f" {field} = " in line)
    comment: list[str] = []
    for line in reversed(block[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip())
    return " ".join(comment)


def test_every_documented_range_is_in_its_proto_comment() -> None:
    # The proto comment above each option states its range (what clients read).
    text = "\n".join(p.read_text() for p in (ROOT / "protos/visionmesh/v1").glob("*.proto"))
    for key, rule in options.RANGES.items():
        comment = _field_comment(text, *key.split("."))
        assert "Range:" in comment, f"{key}: its proto comment does not state {rule.describe()}"


def test_range_checks_accept_the_edges_and_defaults() -> None:
    ok = face_pb2.DetectRequest(max_faces=1000, min_face_size=10.0)
    options.check_request(ok)
    options.check_request(face_pb2.DetectRequest())
    options.check_request(hash_pb2.SearchRequest(max_distance=0, k=1000))
    options.check_request(detect_pb2.DetectObjectsRequest(min_score=0.99, max_detections=300))
    with pytest.raises(
        InvalidInput, match=r"min_score must be 0 \(service default\) or in \[0, 1\)"
    ):
        options.check_request(detect_pb2.DetectObjectsRequest(min_score=1.0))
    with pytest.raises(InvalidInput, match="max_faces"):
        options.check_request(face_pb2.DetectRequest(max_faces=1001))
    with pytest.raises(InvalidInput, match="min_face_size"):
        options.check_request(face_pb2.DetectRequest(min_face_size=float("inf")))
    with pytest.raises(InvalidInput, match="code.bits must be one of 64, 128, 256, got 100"):
        options.check_request(
            hash_pb2.AddRequest(code=hash_pb2.HashCode(bits=100), frames=[common_pb2.Image()])
        )


async def test_message_limit_is_per_rpc(gateway_address: str) -> None:
    # AnalyzeVideo takes 8 MiB messages (1 MiB chunks); Analyze takes a 32 MiB image + 1 MiB.
    nine_mib = gateway_pb2.AnalyzeVideoRequest(chunk=b"\0" * (9 * 1024 * 1024)).SerializeToString()
    async with grpc.aio.insecure_channel(
        gateway_address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        upload = channel.stream_unary("/visionmesh.v1.GatewayService/AnalyzeVideo")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload(iter([nine_mib]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the 8388608-byte limit of /visionmesh.v1.GatewayService/AnalyzeVideo" in (
        info.value.details() or ""
    )
    # The same 9 MiB is fine for Analyze: it gets as far as decoding the (zero) bytes.
    image = gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=b"\0" * (9 * 1024 * 1024)))
    error = await _raw_call(gateway_address, ANALYZE, image.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a recognised image format" in (error.details() or "")
    too_big = gateway_pb2.AnalyzeRequest(image=common_pb2.Image(encoded=b"\0" * (34 * 1024 * 1024)))
    error = await _raw_call(gateway_address, ANALYZE, too_big.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "-byte limit of /visionmesh.v1.GatewayService/Analyze" in (error.details() or "")


async def _list_services(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r
            async for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ]
    return {s.name for s in replies[0].list_services_response.service}


async def test_reflection_is_off_by_default_and_a_setting_turns_it_on(gateway_address: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _list_services(gateway_address)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    dead = f"127.0.0.1:{free_port()}"
    overrides = {"services": {"classify": [dead]}, "server": {"reflection": True}}
    async with running_service(GATEWAY, overrides) as gateway:
        assert "visionmesh.v1.GatewayService" in await _list_services(gateway.address)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def test_pixel_budget_refuses_before_decoding_any_frame() -> None:
    limits = ImageLimits(max_request_pixels=64_000_000)
    # Eight 3000x3000 PNGs: each within the per-image limit, 72 M pixels together.
    frame = common_pb2.Image(encoded=_png(3000, 3000))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            frames_to_rgb([frame] * 8, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "over the per-request budget of 64000000 pixels (images.max_request_pixels)" in str(
        info.value
    )
    assert peak < 5_000_000, f"{peak} bytes allocated before the refusal"
    raw = common_pb2.Image(raw=common_pb2.RawImage(width=4000, height=4000, rgb=b""))
    with pytest.raises(InvalidInput, match="per-request budget"):
        frames_to_rgb([raw] * 5, limits)
    assert len(frames_to_rgb([common_pb2.Image(encoded=_png(64, 48))] * 3, limits)) == 3
