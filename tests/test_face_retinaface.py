"""RetinaFace, the face service's default detector: box maths, batching across image sizes,
small-face recall on real photos, and MTCNN still selectable."""

from __future__ import annotations

import asyncio

import cv2
import grpc
import numpy as np
import pytest
import skimage.data

from services.common.protos import rgb_to_image
from services.face import retinaface
from services.face.main import DEFINITION
from tests.support import running_service
from tests.test_face_service import GROUP_PEOPLE, group_photo  # noqa: F401 (fixture)
from visionmesh.v1 import face_pb2, face_pb2_grpc


def group_mosaic(photo: np.ndarray, n: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``n x n`` copies of the group photo shrunk ``n`` times, in a frame of the original size:
    ``6 n^2`` real faces of known position, each ``n`` times smaller than in the photo."""
    h, w = photo.shape[0] // n, photo.shape[1] // n
    small = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    canvas = np.tile(small, (n, n, 1))
    sx, sy = w / photo.shape[1], h / photo.shape[0]
    points = [
        (j * w + x * sx, i * h + y * sy)
        for i in range(n)
        for j in range(n)
        for (x, y), _ in GROUP_PEOPLE
    ]
    return canvas, points


def recall(faces: list[face_pb2.Face], points: list[tuple[float, float]]) -> float:
    hits = sum(
        any(f.box.x_min <= x <= f.box.x_max and f.box.y_min <= y <= f.box.y_max for f in faces)
        for x, y in points
    )
    return hits / len(points)


def test_priors_match_the_network_outputs() -> None:
    # Two priors per cell on 80x80, 40x40 and 20x20 maps of a 640 px input.
    p = retinaface.priors(640)
    assert p.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4)
    assert p[0].tolist() == [4.0, 4.0, 16.0, 16.0] and p[1].tolist() == [4.0, 4.0, 32.0, 32.0]
    assert p[2].tolist() == [12.0, 4.0, 16.0, 16.0]
    assert p[-1].tolist() == [624.0, 624.0, 512.0, 512.0]
    # Zero offsets decode to the prior itself.
    boxes, points = retinaface.decode(np.zeros((1, 4)), np.zeros((1, 10)), p[:1])
    assert boxes.tolist() == [[-4.0, -4.0, 12.0, 12.0]] and points.shape == (1, 5, 2)


def test_letterbox_buckets() -> None:
    assert retinaface.pick_bucket(100, 300, [320, 640]) == 320
    assert retinaface.pick_bucket(480, 400, [640, 320]) == 640
    assert retinaface.pick_bucket(2000, 900, [320, 640]) == 640
    x, box = retinaface.letterbox(np.full((100, 200, 3), 255, np.uint8), 320)
    assert x.shape == (1, 3, 320, 320) and box.scale == 1.6
    # The image fills the top 160 rows; below is zero (the mean colour).
    assert x[0, 0, 159, 0] == 255 - 104 and x[0, 2, 159, 0] == 255 - 123
    assert not x[0, :, 160:].any()
    # Without the square, each side is only rounded up to a multiple of 32; same pixels, same
    # scale.
    y, fit = retinaface.letterbox(np.full((100, 200, 3), 255, np.uint8), 320, square=False)
    assert y.shape == (1, 3, 160, 320) and fit.scale == 1.6
    assert np.array_equal(y, x[:, :, :160])
    assert retinaface.letterbox(np.zeros((300, 451, 3), np.uint8), 640, False)[0].shape[2:] == (
        448,
        640,
    )
    assert len(retinaface.priors(160, 320)) == 2 * (20 * 40 + 10 * 20 + 5 * 10)


async def test_images_of_different_sizes_share_a_detector_batch(
    group_photo: np.ndarray,  # noqa: F811
) -> None:
    from prometheus_client import REGISTRY

    def batches() -> tuple[float, float]:
        labels = {"model": "face_retinaface"}
        return (
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_count", labels) or 0.0,
            REGISTRY.get_sample_value("visionmesh_batcher_batch_size_sum", labels) or 0.0,
        )

    # Four sizes between 321 and 640 px on the long side: one 640 px bucket, padded to its
    # square.
    images = [
        skimage.data.astronaut(),
        cv2.resize(group_photo, (640, 443), interpolation=cv2.INTER_AREA),
        cv2.resize(group_photo, (600, 415), interpolation=cv2.INTER_AREA),
        skimage.data.coffee()[:, :600],
    ]
    window = {"batcher": {"max_queue_delay_us": 1_000_000, "max_batch_size": 8}}
    square = {"retinaface": {"pad_to_square": True}}
    async with (
        running_service(DEFINITION, {"retinaface": window, "detector": square}) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = face_pb2_grpc.FaceServiceStub(channel)
        count0, rows0 = batches()
        replies = await asyncio.gather(
            *(
                stub.Detect(face_pb2.DetectRequest(image=rgb_to_image(img)), timeout=60)
                for img in images
            )
        )
        count1, rows1 = batches()
    assert [len(r.faces) for r in replies] == [1, 6, 6, 0]
    assert rows1 - rows0 == 4
    assert count1 - count0 < 4, f"{count1 - count0:.0f} detector batches for 4 calls"


@pytest.mark.parametrize(("tiles", "least"), [(2, 1.0), (3, 0.75)])
async def test_small_faces_recall(
    group_photo: np.ndarray,  # noqa: F811
    tiles: int,
    least: float,
) -> None:
    """Faces 2x / 3x smaller than the group photo's (about 50-70 / 35-50 px), 24 / 54 of them,
    in a 1280 px frame that the default 640 px bucket halves. Measured: recall 1.00 / 0.80."""
    img, points = group_mosaic(group_photo, tiles)
    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        reply = await face_pb2_grpc.FaceServiceStub(channel).Detect(
            face_pb2.DetectRequest(image=rgb_to_image(img), max_faces=500), timeout=60
        )
    assert recall(list(reply.faces), points) >= least
    assert len(reply.faces) <= len(points)


async def test_large_bucket_finds_quarter_size_faces(group_photo: np.ndarray) -> None:  # noqa: F811
    """With a 1280 px bucket the 96 faces of the 4 x 4 mosaic (about 25-35 px) are all found."""
    img, points = group_mosaic(group_photo, 4)
    cfg = {"detector": {"retinaface": {"buckets": [320, 640, 1280]}}}
    async with (
        running_service(DEFINITION, cfg) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        reply = await face_pb2_grpc.FaceServiceStub(channel).Detect(
            face_pb2.DetectRequest(image=rgb_to_image(img), max_faces=500), timeout=60
        )
    assert recall(list(reply.faces), points) >= 0.95
    assert len(reply.faces) <= len(points)


async def test_mtcnn_is_still_selectable() -> None:
    async with (
        running_service(DEFINITION, {"detector": {"kind": "mtcnn", "min_face_size": 20}}) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        reply = await face_pb2_grpc.FaceServiceStub(channel).Detect(
            face_pb2.DetectRequest(image=rgb_to_image(skimage.data.astronaut())), timeout=60
        )
    assert len(reply.faces) == 1 and reply.faces[0].gender.label == "female"


def test_unknown_detector_kind_is_refused() -> None:
    from services.common import config as cfgmod
    from services.face.config import FaceConfig
    from services.face.servicer import FaceServicer

    cfg = cfgmod.load(FaceConfig, environ={}, overrides={"detector": {"kind": "yolo"}})
    with pytest.raises(ValueError, match="detector.kind"):
        FaceServicer(cfg)
