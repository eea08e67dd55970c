"""The classify service end to end: a real server in-process with the real models on real photos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import skimage.data

from services.classify.config import SafetyConfig
from services.classify.main import DEFINITION
from services.classify.safety import second_look_regions
from services.common.protos import rgb_to_image
from tests.support import encode, running_service
from tests.test_classify_quality import blurred, darkened
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[classify_pb2_grpc.ClassifyServiceStub]:
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield classify_pb2_grpc.ClassifyServiceStub(channel)


async def classify(
    stub: classify_pb2_grpc.ClassifyServiceStub, rgb: np.ndarray, **kwargs: object
) -> classify_pb2.ClassifyResponse:
    return await stub.Classify(
        classify_pb2.ClassifyRequest(image=rgb_to_image(rgb), **kwargs), timeout=30
    )


def content_tags(response: classify_pb2.ClassifyResponse) -> list[common_pb2.Tag]:
    return [t for t in response.tags if t.source == "classify"]


def tag_names(response: classify_pb2.ClassifyResponse, source: str) -> list[str]:
    return [t.name for t in response.tags if t.source == source]


async def test_chelsea_is_a_cat(stub: classify_pb2_grpc.ClassifyServiceStub) -> None:
    response = await classify(stub, skimage.data.chelsea())
    top = content_tags(response)[0]
    assert (top.name, top.display_name_en, top.display_name_zh) == ("animal/cat", "Cat", "猫")
    assert top.score > 0.8
    # The raw ImageNet top-k is still there, and the cat tag is the sum of its cat classes.
    assert len(response.labels) == 5
    assert response.labels[0].name.split(",")[0] in {"tabby", "tiger cat", "Egyptian cat"}
    cat_classes = sum(
        label.score for label in response.labels if label.class_index in range(281, 286)
    )
    assert top.score == pytest.approx(cat_classes, abs=0.01)
    # Whole response is ranked by score.
    scores = [t.score for t in response.tags]
    assert scores == sorted(scores, reverse=True)


async def test_coffee_is_a_drink(stub: classify_pb2_grpc.ClassifyServiceStub) -> None:
    response = await classify(stub, skimage.data.coffee())
    top = content_tags(response)[0]
    assert top.name.split("/")[0] in {"food", "drink"}
    assert top.name == "drink/coffee" and top.display_name_zh == "咖啡"


async def test_rocket_is_a_rocket(stub: classify_pb2_grpc.ClassifyServiceStub) -> None:
    response = await classify(stub, skimage.data.rocket())
    assert content_tags(response)[0].name == "vehicle/rocket"


async def test_astronaut_gets_no_confident_nonsense(
    stub: classify_pb2_grpc.ClassifyServiceStub,
) -> None:
    # ImageNet has no astronaut: the model must stay unsure and keep to gear-like tags.
    response = await classify(stub, skimage.data.astronaut())
    tags = content_tags(response)
    assert tags and all(t.score < 0.5 for t in tags)
    assert not {t.name.split("/")[0] for t in tags} & {"animal", "food", "drink", "plant"}


@pytest.mark.parametrize("name", PHOTOS)
async def test_photos_are_safe_and_well_exposed(
    stub: classify_pb2_grpc.ClassifyServiceStub, name: str
) -> None:
    response = await classify(stub, getattr(skimage.data, name)())
    assert response.safety.verdict == "normal"
    assert 0.0 <= response.safety.nsfw_score < 0.1
    assert tag_names(response, "safety") == ["safety/normal"]
    safety_tag = next(t for t in response.tags if t.source == "safety")
    assert safety_tag.score == pytest.approx(1 - response.safety.nsfw_score, abs=1e-6)
    assert safety_tag.display_name_zh == "正常"
    assert tag_names(response, "quality") == [] and list(response.quality.verdicts) == []
    assert (
        0 < response.quality.brightness < 255
        and response.quality.contrast > 0
        and response.quality.sharpness > 0
    )


@pytest.mark.parametrize("name", PHOTOS)
async def test_blur_and_darkening_flip_exactly_their_quality_tags(
    stub: classify_pb2_grpc.ClassifyServiceStub, name: str
) -> None:
    rgb = getattr(skimage.data, name)()
    blurry, dark = await asyncio.gather(classify(stub, blurred(rgb)), classify(stub, darkened(rgb)))
    assert tag_names(blurry, "quality") == ["quality/blurred"] == list(blurry.quality.verdicts)
    assert tag_names(dark, "quality") == ["quality/dark"] == list(dark.quality.verdicts)
    assert next(t for t in dark.tags if t.source == "quality").display_name_zh == "过暗"
    assert blurry.safety.verdict == dark.safety.verdict == "normal"


async def test_encoded_and_raw_images_agree_and_top_k_is_honoured(
    stub: classify_pb2_grpc.ClassifyServiceStub,
) -> None:
    rgb = skimage.data.chelsea()
    raw = await classify(stub, rgb, top_k=3)
    png = await stub.Classify(
        classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=encode(rgb, "PNG")), top_k=3)
    )
    assert [label.class_index for label in raw.labels] == [
        label.class_index for label in png.labels
    ]
    assert len(raw.labels) == 3
    np.testing.assert_allclose(
        [label.score for label in raw.labels], [label.score for label in png.labels], atol=1e-4
    )


async def test_concurrent_requests_are_batched_with_unchanged_answers(
    stub: classify_pb2_grpc.ClassifyServiceStub,
) -> None:
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    alone = [await classify(stub, img) for img in images]
    together = await asyncio.gather(*(classify(stub, images[i % 4]) for i in range(16)))
    for i, response in enumerate(together):
        assert [t.name for t in content_tags(response)] == [
            t.name for t in content_tags(alone[i % 4])
        ]
        assert response.safety.nsfw_score == pytest.approx(alone[i % 4].safety.nsfw_score, abs=1e-4)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (classify_pb2.ClassifyRequest(), "no image"),
        (
            classify_pb2.ClassifyRequest(
                image=common_pb2.Image(encoded=b"definitely not an image")
            ),
            "",
        ),
        (
            classify_pb2.ClassifyRequest(
                image=common_pb2.Image(
                    raw=common_pb2.RawImage(width=10, height=10, rgb=b"\0" * 299)
                )
            ),
            "",
        ),
        (
            classify_pb2.ClassifyRequest(
                image=rgb_to_image(np.zeros((8, 8, 3), np.uint8)), top_k=-1
            ),
            "top_k",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    stub: classify_pb2_grpc.ClassifyServiceStub,
    request_: classify_pb2.ClassifyRequest,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Classify(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_second_look_scores_crops_in_the_borderline_band() -> None:
    # A band covering every score forces the second look on an ordinary photo.
    overrides = {"safety": {"borderline_low": 0.0, "borderline_high": 1.0}}
    rgb = skimage.data.astronaut()
    async with (
        running_service(DEFINITION, overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        looked = await classify(classify_pb2_grpc.ClassifyServiceStub(channel), rgb)
    plain_overrides = {"safety": {"second_look": False}}
    async with (
        running_service(DEFINITION, plain_overrides) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        plain = await classify(classify_pb2_grpc.ClassifyServiceStub(channel), rgb)
    assert looked.safety.second_look and not plain.safety.second_look
    # The reported score is the maximum over the whole image and the crops; on the
    # astronaut one tile scores above the whole frame, so the region is reported.
    assert looked.safety.nsfw_score > plain.safety.nsfw_score
    assert looked.safety.HasField("region")
    r = looked.safety.region
    assert (int(r.x_min), int(r.y_min), int(r.x_max), int(r.y_max)) in second_look_regions(
        *rgb.shape[:2], SafetyConfig()
    )
    safety_tag = next(t for t in looked.tags if t.source == "safety")
    assert safety_tag.HasField("box") and safety_tag.box == r
    assert looked.safety.verdict == "normal"
