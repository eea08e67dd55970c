"""The face service end to end: a real server in-process, real MTCNN / age / gender / emotion
models, real photos.

The group photo comes from the insightface wheel (no weights in it): the set-up
(``make testdata``, part of ``make setup``) fetches it once into ``var/test-data``;
a test that needs it fails, naming that command, when it is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skimage.data
from PIL import Image

from services.common.protos import rgb_to_image
from services.face.main import DEFINITION
from tests.support import encode, running_service
from tools.testdata import INSIGHTFACE_DIR, missing_message
from visionmesh.v1 import common_pb2, face_pb2, face_pb2_grpc

GROUP_PHOTO_CACHE = INSIGHTFACE_DIR / "t1.jpg"
# The six people of t1.jpg (1280 x 886): a point inside each face, and their gender (labelled by
# hand).
GROUP_PEOPLE = [
    ((111, 329), "female"),
    ((320, 206), "female"),
    ((516, 338), "male"),
    ((792, 407), "male"),
    ((960, 132), "male"),
    ((1180, 337), "female"),
]


def fetch_group_photo() -> Path | None:
    """The cached t1.jpg (``make testdata`` puts it there); None when it is not there."""
    return GROUP_PHOTO_CACHE if GROUP_PHOTO_CACHE.is_file() else None


@pytest.fixture(scope="module")
def group_photo() -> np.ndarray:
    # Test data is fetched by the set-up, never by a test: a missing file is a set-up error.
    if not GROUP_PHOTO_CACHE.is_file():
        pytest.fail(missing_message(GROUP_PHOTO_CACHE))
    return np.asarray(Image.open(GROUP_PHOTO_CACHE).convert("RGB"))


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[face_pb2_grpc.FaceServiceStub]:
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield face_pb2_grpc.FaceServiceStub(channel)


async def detect(
    stub: face_pb2_grpc.FaceServiceStub, rgb: np.ndarray, **kwargs: Any
) -> face_pb2.DetectResponse:
    return await stub.Detect(face_pb2.DetectRequest(image=rgb_to_image(rgb), **kwargs), timeout=60)


def contains(face: face_pb2.Face, point: tuple[int, int]) -> bool:
    return (
        face.box.x_min <= point[0] <= face.box.x_max
        and face.box.y_min <= point[1] <= face.box.y_max
    )


async def test_astronaut_is_one_happy_adult_woman(stub: face_pb2_grpc.FaceServiceStub) -> None:
    response = await detect(stub, skimage.data.astronaut())
    assert len(response.faces) == 1
    face = response.faces[0]
    # Eileen Collins' face, roughly x 180-270, y 60-175 in the 512 px photo.
    assert contains(face, (225, 115)) and face.box.x_max - face.box.x_min < 150
    assert face.score > 0.95
    assert len(face.landmarks) == 5
    left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
    assert left_eye.x < nose.x < right_eye.x and mouth_l.x < mouth_r.x
    assert max(left_eye.y, right_eye.y) < nose.y < min(mouth_l.y, mouth_r.y)
    assert face.gender.label == "female" and face.gender.confidence > 0.8
    assert 25 <= face.age.years <= 55 and face.age.low <= face.age.years <= face.age.high
    assert face.emotion.dominant == "happy" and face.emotion.scores["happy"] > 0.6
    assert abs(sum(face.emotion.scores.values()) - 1) < 1e-3 and len(face.emotion.scores) == 7
    assert abs(face.pose.roll) < 15 and abs(face.pose.yaw) < 20
    assert (
        not face.quality.blurred
        and not face.quality.under_exposed
        and not face.quality.over_exposed
    )
    names = {t.name: t for t in response.tags}
    assert {
        "face/count",
        "face/female",
        "face/smiling",
    } <= names.keys() and "face/male" not in names
    assert all(
        t.source == "face" and t.display_name_en and t.display_name_zh for t in response.tags
    )
    assert names["face/count"].display_name_en == "1 face"


@pytest.mark.regression  # the O-Net threshold was chosen on this photo
async def test_regression_group_photo_recall_and_gender(
    stub: face_pb2_grpc.FaceServiceStub, group_photo: np.ndarray
) -> None:
    response = await detect(stub, group_photo)
    found, right_gender = 0, 0
    for point, gender in GROUP_PEOPLE:
        hits = [f for f in response.faces if contains(f, point)]
        if hits:
            found += 1
            right_gender += hits[0].gender.label == gender
    recall = found / len(GROUP_PEOPLE)
    precision = found / max(len(response.faces), 1)
    # Measured: 6/6 found, no extra box, 6/6 genders right.
    assert recall == 1.0, f"recall {recall:.2f}"
    assert precision == 1.0, f"{len(response.faces)} boxes for 6 people"
    assert right_gender >= 5, f"gender right on {right_gender}/6"
    names = {t.name for t in response.tags}
    assert {"face/count", "face/female", "face/male", "face/smiling"} <= names


async def test_encoded_input_gives_the_same_faces(stub: face_pb2_grpc.FaceServiceStub) -> None:
    rgb = skimage.data.astronaut()
    png = await stub.Detect(
        face_pb2.DetectRequest(image=common_pb2.Image(encoded=encode(rgb, "PNG"))), timeout=60
    )
    raw = await detect(stub, rgb)
    assert len(png.faces) == len(raw.faces) == 1
    assert png.faces[0].box == raw.faces[0].box


@pytest.mark.parametrize("name", ["coffee", "rocket"])
async def test_photos_without_people_have_no_face(
    stub: face_pb2_grpc.FaceServiceStub, name: str
) -> None:
    response = await detect(stub, getattr(skimage.data, name)())
    assert list(response.faces) == [] and list(response.tags) == []


async def test_max_faces_and_min_face_size(
    stub: face_pb2_grpc.FaceServiceStub, group_photo: np.ndarray
) -> None:
    two = await detect(stub, group_photo, max_faces=2)
    assert len(two.faces) == 2
    # Every face in the photo is under 200 px: asking for larger ones finds none.
    big = await detect(stub, group_photo, min_face_size=200)
    assert len(big.faces) == 0


async def test_dark_face_is_under_exposed(stub: face_pb2_grpc.FaceServiceStub) -> None:
    dark = (skimage.data.astronaut().astype(np.float32) * 0.3).astype(np.uint8)
    response = await detect(stub, dark)
    assert len(response.faces) == 1 and response.faces[0].quality.under_exposed


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (face_pb2.DetectRequest(), "no image"),
        (face_pb2.DetectRequest(image=common_pb2.Image(encoded=b"not an image")), ""),
        (
            face_pb2.DetectRequest(
                image=common_pb2.Image(raw=common_pb2.RawImage(width=10, height=10, rgb=b"\0" * 7))
            ),
            "",
        ),
        (
            face_pb2.DetectRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), max_faces=-1
            ),
            "max_faces",
        ),
        (
            face_pb2.DetectRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), min_face_size=3
            ),
            "min_face_size",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    stub: face_pb2_grpc.FaceServiceStub, request_: face_pb2.DetectRequest, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


async def test_tiny_image_has_no_face(stub: face_pb2_grpc.FaceServiceStub) -> None:
    response = await detect(stub, np.full((8, 8, 3), 128, np.uint8))
    assert list(response.faces) == []


async def test_attribute_heads_batch_faces_of_concurrent_calls(group_photo: np.ndarray) -> None:
    """Four concurrent group-photo calls (6 faces each): the gender head runs them in fewer, larger
    batches."""
    from prometheus_client import REGISTRY

    def batches(model: str) -> tuple[float, float]:
        labels = {"model": model}
        return (
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_count", labels) or 0.0,
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_sum", labels) or 0.0,
        )

    # A long batching window so calls that finish detection at different times still meet.
    window = {"batcher": {"max_queue_delay_us": 1_500_000, "max_batch_size": 64}}
    async with (
        running_service(DEFINITION, {"age": window, "gender": window, "emotion": window}) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = face_pb2_grpc.FaceServiceStub(channel)
        count0, rows0 = batches("face_gender")
        replies = await asyncio.gather(*(detect(stub, group_photo) for _ in range(4)))
        count1, rows1 = batches("face_gender")
    assert [len(r.faces) for r in replies] == [6, 6, 6, 6]
    assert rows1 - rows0 == 24
    assert count1 - count0 < 4, f"{count1 - count0:.0f} batches for 4 calls: no cross-call batching"
