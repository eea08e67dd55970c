"""Pose keypoints behind the real gateway: in the caller's pixels when the gateway sends the
service a smaller image, and the detect options (no_pose, max_poses) passed through."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from gateway.main import DEFINITION as GATEWAY
from services.common.images import fit_within
from services.common.net import free_port
from services.common.protos import rgb_to_image
from services.detect.main import DEFINITION as DETECT
from tests.support import encode, running_service
from tests.test_detect_service import campus
from visionmesh.v1 import common_pb2, detect_pb2, detect_pb2_grpc, gateway_pb2, gateway_pb2_grpc

Stubs = tuple[gateway_pb2_grpc.GatewayServiceStub, detect_pb2_grpc.DetectionServiceStub]


@pytest.fixture(scope="module")
async def stubs() -> AsyncIterator[Stubs]:
    async with running_service(DETECT) as detect:
        dead = f"127.0.0.1:{free_port()}"
        services = {name: [dead] for name in ("classify", "ocr", "face", "hash")}
        services["detect"] = [detect.address]
        async with (
            running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway,
            grpc.aio.insecure_channel(gateway.address) as channel,
            grpc.aio.insecure_channel(detect.address) as direct,
        ):
            yield (
                gateway_pb2_grpc.GatewayServiceStub(channel),
                detect_pb2_grpc.DetectionServiceStub(direct),
            )


async def analyze(
    stub: gateway_pb2_grpc.GatewayServiceStub, rgb: np.ndarray, **detect: int | bool
) -> gateway_pb2.AnalyzeResponse:
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=encode(rgb)),
        features=[common_pb2.FEATURE_DETECT],
        options=gateway_pb2.AnalyzeOptions(
            no_cache=True, detect=gateway_pb2.DetectOptions(**detect)
        ),
    )
    reply = await stub.Analyze(request, timeout=60)
    assert not reply.errors, reply.errors
    return reply


async def test_keypoints_in_callers_pixels(stubs: Stubs) -> None:
    gateway, direct = stubs
    # Three times the 768 px frame: the gateway sends the service 2048 px and scales back.
    big = cv2.resize(campus(), (2304, 1728), interpolation=cv2.INTER_CUBIC)
    reply = await analyze(gateway, big)
    # What the service got: the same decoded JPEG, downscaled the gateway's way.
    small, scale = fit_within(np.asarray(Image.open(io.BytesIO(encode(big))).convert("RGB")), 2048)
    want = await direct.DetectObjects(
        detect_pb2.DetectObjectsRequest(image=rgb_to_image(small)), timeout=60
    )
    got = [[(k.name, k.x, k.y) for k in d.keypoints] for d in reply.detect.detections]
    ref = [[(k.name, k.x / scale, k.y / scale) for k in d.keypoints] for d in want.detections]
    assert sum(1 for points in got if points) >= 3
    assert [[n for n, _, _ in p] for p in got] == [[n for n, _, _ in p] for p in ref]
    for points, expected in zip(got, ref, strict=True):
        for (_, x, y), (_, ex, ey) in zip(points, expected, strict=True):
            assert abs(x - ex) < 0.5 and abs(y - ey) < 0.5
    assert max(y for points in got for _, _, y in points) > 1400  # the largest walker's feet


async def test_detect_options_reach_the_service(stubs: Stubs) -> None:
    gateway, _ = stubs
    off = await analyze(gateway, campus(), no_pose=True)
    assert off.detect.people_count >= 5
    assert not any(d.keypoints for d in off.detect.detections)
    one = await analyze(gateway, campus(), max_poses=1)
    assert sum(d.pose_score > 0 for d in one.detect.detections) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await analyze(gateway, campus(), max_poses=17)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
