"""The face service behind the real gateway: faces survive the gateway's downsizing and their tags
merge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import cv2
import grpc
import pytest
import skimage.data

from gateway.main import DEFINITION as GATEWAY
from services.common.net import free_port
from services.face.main import DEFINITION as FACE
from tests.support import encode, running_service
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with running_service(FACE) as face:
        dead = f"127.0.0.1:{free_port()}"
        services = {"classify": [dead], "ocr": [dead], "face": [face.address], "hash": [dead]}
        async with (
            running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def test_face_box_is_in_the_callers_pixels_after_gateway_downsizing(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    # 512 px astronaut blown up to 2560 px: the gateway sends the face service a 2048 px image
    # and must scale the box and landmarks back to the 2560 px the caller sent.
    big = cv2.resize(skimage.data.astronaut(), (2560, 2560), interpolation=cv2.INTER_LINEAR)
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=encode(big)),
        features=[common_pb2.FEATURE_FACE],
        options=gateway_pb2.AnalyzeOptions(no_cache=True),
    )
    reply = await stub.Analyze(request, timeout=60)
    assert not reply.errors
    assert len(reply.face.faces) == 1
    face = reply.face.faces[0]
    # In the 512 px original the face spans about x 180-267, y 60-175: five times that here.
    assert 800 < face.box.x_min < 1000 and 1250 < face.box.x_max < 1450
    assert 200 < face.box.y_min < 400 and 800 < face.box.y_max < 950
    assert all(
        face.box.x_min <= p.x <= face.box.x_max and face.box.y_min <= p.y <= face.box.y_max
        for p in face.landmarks
    )
    names = [t.name for t in reply.tags if t.source == "face"]
    assert {"face/count", "face/female", "face/smiling"} <= set(names)
