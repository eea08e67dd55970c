"""Detection and face behind the real gateway: boxes in the caller's pixels, people linked to
their faces' attributes, merged people tags, and per-frame / clip counts for a video."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import skimage.data

from gateway.main import DEFINITION as GATEWAY
from services.common.net import free_port
from services.detect.main import DEFINITION as DETECT
from services.face.main import DEFINITION as FACE
from tests.support import encode, running_service
from tests.test_detect_service import CAMPUS_PEOPLE, campus
from tests.test_face_service import group_photo  # noqa: F401 (fixture)
from tools.make_sample_video import make_video
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

PEOPLE_FEATURES = [common_pb2.FEATURE_FACE, common_pb2.FEATURE_DETECT]
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with running_service(FACE) as face, running_service(DETECT) as detect:
        dead = f"127.0.0.1:{free_port()}"
        services = {
            "classify": [dead],
            "ocr": [dead],
            "face": [face.address],
            "hash": [dead],
            "detect": [detect.address],
        }
        async with (
            running_service(GATEWAY, {"services": services, "retry_attempts": 1}) as gateway,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def analyze(
    stub: gateway_pb2_grpc.GatewayServiceStub, rgb: np.ndarray
) -> gateway_pb2.AnalyzeResponse:
    request = gateway_pb2.AnalyzeRequest(
        image=common_pb2.Image(encoded=encode(rgb)),
        features=PEOPLE_FEATURES,
        options=gateway_pb2.AnalyzeOptions(no_cache=True),
    )
    reply = await stub.Analyze(request, timeout=60)
    assert not reply.errors, reply.errors
    return reply


async def test_astronaut_person_carries_her_face_attributes(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    reply = await analyze(stub, skimage.data.astronaut())
    assert reply.detect.people_count == 1 and len(reply.face.faces) == 1
    person = reply.detect.detections[0]
    assert person.HasField("face") and person.face.face_index == 0
    assert person.face.gender.label == "female" == reply.face.faces[0].gender.label
    assert person.face.emotion.dominant == "happy"
    assert person.face.age == reply.face.faces[0].age
    names = {t.name for t in reply.tags}
    assert {"people/single", "people/close-up", "face/count"} <= names


async def test_group_photo_boxes_in_callers_pixels_and_faces_linked(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    group_photo: np.ndarray,  # noqa: F811
) -> None:
    # Twice the 1280 px photo: the gateway sends services 2048 px and scales boxes back.
    big = cv2.resize(group_photo, (2560, 1772), interpolation=cv2.INTER_LINEAR)
    reply = await analyze(stub, big)
    assert len(reply.face.faces) == 6
    assert "people/group" in {t.name for t in reply.tags}
    people = list(reply.detect.detections)
    assert max(p.box.x_max for p in people) > 2048
    linked = [p for p in people if p.HasField("face")]
    assert len(linked) >= 4
    assert len({p.face.face_index for p in linked}) == len(linked)
    for p in linked:
        f = reply.face.faces[p.face.face_index].box
        cx, cy = (f.x_min + f.x_max) / 2, (f.y_min + f.y_max) / 2
        assert p.box.x_min <= cx <= p.box.x_max and p.box.y_min <= cy <= p.box.y_max
        assert p.face.gender.label == reply.face.faces[p.face.face_index].gender.label


async def test_campus_frame_people_without_visible_faces(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    reply = await analyze(stub, campus())
    assert abs(reply.detect.people_count - CAMPUS_PEOPLE) <= 1
    assert "people/group" in {t.name for t in reply.tags}


@pytest.fixture(scope="module")
def people_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real scenes: the astronaut (one person, close) then the campus walkway (six)."""
    path = tmp_path_factory.mktemp("video") / "people.mp4"
    return make_video(
        path,
        seconds=4,
        size=(768, 576),
        fps=10,
        gop=10,
        scenes=[skimage.data.astronaut, campus],
    )


def upload(data: bytes, num_frames: int) -> Iterator[gateway_pb2.AnalyzeVideoRequest]:
    header = gateway_pb2.VideoUploadHeader(
        features=[common_pb2.FEATURE_DETECT], num_frames=num_frames, total_size=len(data)
    )
    yield gateway_pb2.AnalyzeVideoRequest(header=header)
    for i in range(0, len(data), CHUNK):
        yield gateway_pb2.AnalyzeVideoRequest(chunk=data[i : i + CHUNK])


async def test_video_counts_people_per_frame_and_for_the_clip(
    stub: gateway_pb2_grpc.GatewayServiceStub, people_clip: Path
) -> None:
    reply = await stub.AnalyzeVideo(upload(people_clip.read_bytes(), 4), timeout=120)
    assert not reply.errors, reply.errors
    counts = [f.result.detect.people_count for f in reply.frames]
    assert len(counts) == 4
    # H.264 at crf 23 blurs the small walkers: the campus frames count 3-7 of the six.
    assert counts[0] == 1 and 3 <= counts[-1] <= CAMPUS_PEOPLE + 1
    assert reply.people_count == max(counts)
    names = [t.name for t in reply.tags if t.source == "detect"]
    # The clip's count tag is the busiest frame's; the close-up comes from the astronaut.
    assert "people/group" in names and "people/close-up" in names
    assert "people/single" not in names and "people/none" not in names


def test_text_output_shows_the_people_count() -> None:
    from visionmesh.client import render_text

    image = gateway_pb2.AnalyzeResponse()
    image.detect.people_count = 3
    assert "people: 3" in render_text(Path("crowd.jpg"), image)
    video = gateway_pb2.AnalyzeVideoResponse(people_count=6)
    for t, n in ((0.0, 1), (2.0, 6)):
        frame = video.frames.add(timestamp_s=t)
        frame.result.detect.people_count = n
    assert "people: at most 6 (0.0s 1, 2.0s 6)" in render_text(Path("clip.mp4"), video)
