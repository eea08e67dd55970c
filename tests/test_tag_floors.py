"""Tag floors in the gateway's merged list: low-score classify guesses are left out unless the
caller asks for every score; confident tags and other sources' tags stay."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import skimage.data

from gateway.main import DEFINITION as GATEWAY
from gateway.merge import above_floors
from services.classify.main import DEFINITION as CLASSIFY
from services.common.net import free_port
from services.detect.main import DEFINITION as DETECT
from tests.support import encode, running_service
from tests.test_detect_service import campus
from visionmesh import features
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def test_above_floors_keeps_sources_without_a_floor() -> None:
    tags = [
        common_pb2.Tag(name="animal/cat", score=0.9, source="classify"),
        common_pb2.Tag(name="sport/golf", score=0.05, source="classify"),
        common_pb2.Tag(name="people/none", score=0.02, source="detect"),
    ]
    kept = above_floors(tags, {"classify": 0.5})
    assert [t.name for t in kept] == ["animal/cat", "people/none"]


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with running_service(CLASSIFY) as classify, running_service(DETECT) as detect:
        dead = f"127.0.0.1:{free_port()}"
        services = {spec.name: [dead] for spec in features.all_features()}
        services.update(classify=[classify.address], detect=[detect.address])
        async with (
            running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def analyze(
    stub: gateway_pb2_grpc.GatewayServiceStub, rgb: np.ndarray, all_scores: bool = False
) -> gateway_pb2.AnalyzeResponse:
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=encode(rgb)),
        features=[common_pb2.FEATURE_CLASSIFY, common_pb2.FEATURE_DETECT],
        options=gateway_pb2.AnalyzeOptions(all_tag_scores=all_scores),
    )
    reply = await stub.Analyze(request, timeout=60)
    assert not reply.errors, reply.errors
    return reply


async def test_campus_scene_has_people_tags_and_no_classify_guesses(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    """The surveillance frame: ImageNet has no class for it (best guess "bicycle" 0.1)."""
    reply = await analyze(stub, campus())
    classify = [t for t in reply.tags if t.source == "classify"]
    assert classify == []
    assert "people/group" in {t.name for t in reply.tags}
    every = await analyze(stub, campus(), all_scores=True)
    guesses = [t for t in every.tags if t.source == "classify"]
    assert guesses and max(t.score for t in guesses) < 0.5
    # The per-feature answer keeps every tag either way.
    assert [t.name for t in reply.classify.tags] == [t.name for t in every.classify.tags]


async def test_confident_tag_stays(stub: gateway_pb2_grpc.GatewayServiceStub) -> None:
    reply = await analyze(stub, skimage.data.chelsea())
    names = {t.name for t in reply.tags}
    assert "animal/cat" in names and "people/none" in names
    assert all(t.score >= 0.5 for t in reply.tags if t.source == "classify")
