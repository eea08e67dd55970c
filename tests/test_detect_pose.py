"""Pose keypoints of the detection service on real photos: the rebuilt BlazePose landmark model
(ONNX, served and batched) on person crops, plus its crop geometry and the export's fidelity."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import skimage.data

from services.detect import pose
from tests.test_detect_service import campus, detect
from tests.test_face_service import group_photo  # noqa: F401 (fixture)
from visionmesh.v1 import detect_pb2, detect_pb2_grpc

FACE = ("nose", "left_eye", "right_eye")


def points(d: detect_pb2.Detection) -> dict[str, tuple[float, float]]:
    return {k.name: (k.x, k.y) for k in d.keypoints}


def inside(p: tuple[float, float], b: Any, margin: float = 0.0) -> bool:
    return bool(
        b.x_min - margin <= p[0] <= b.x_max + margin
        and b.y_min - margin <= p[1] <= b.y_max + margin
    )


def test_crop_maps_back_to_the_image() -> None:
    rgb = np.zeros((400, 300, 3), np.uint8)
    rgb[100:110, 200:210] = 255  # a white square at x 200-210, y 100-110
    r = pose.roi(np.array([150, 50, 250, 350], np.float32))
    assert r.side == pytest.approx(300 * pose.ROI_SCALE)
    x = pose.crop(rgb, r)
    assert x.shape == (256, 256, 3) and x.dtype == np.float32 and x.max() <= 1.0
    ys, xs = np.nonzero(x[..., 0] > 0.5)
    scale = r.side / 256
    assert r.x0 + xs.mean() * scale == pytest.approx(205, abs=1.5)
    assert r.y0 + ys.mean() * scale == pytest.approx(105, abs=1.5)
    # Parts of the square outside the image are black.
    assert x[:, :10].max() == 0.0
    # A large image is shrunk by area first: the same place comes out.
    big = np.kron(rgb, np.ones((10, 10, 1), np.uint8))
    xb = pose.crop(big, pose.Roi(r.x0 * 10, r.y0 * 10, r.side * 10))
    ys, xs = np.nonzero(xb[..., 0] > 0.25)
    assert r.x0 + xs.mean() * scale == pytest.approx(205, abs=2)


def test_largest_people_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 20, 20]], np.float32)
    assert pose.largest(boxes, 2).tolist() == [1, 2]
    assert pose.largest(boxes, 0).tolist() == []


async def test_astronaut_face_and_shoulders(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    reply = await detect(detect_stub, skimage.data.astronaut())
    (d,) = reply.detections
    assert d.pose_score > 0.9
    got = points(d)
    for name in (*FACE, "left_shoulder", "right_shoulder"):
        assert name in got and inside(got[name], d.box), name
    # Eileen Collins' face: about x 175-290, y 70-190 in the 512 px photo.
    for name in FACE:
        x, y = got[name]
        assert 175 < x < 290 and 70 < y < 190, (name, x, y)
    assert got["left_eye"][0] > got["right_eye"][0]  # her left eye is on the image's right
    nose_y = got["nose"][1]
    assert got["left_shoulder"][1] > nose_y + 40 and got["right_shoulder"][1] > nose_y + 40
    # A half-length portrait: no hips or legs (the model invents knees at 0.62).
    assert not set(got) & pose.LOWER_BODY
    assert all(0.5 <= k.score <= 1.0 for k in d.keypoints)


async def test_campus_largest_people_stand_on_their_ankles(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
) -> None:
    reply = await detect(detect_stub, campus(), max_poses=3)
    people = list(reply.detections)
    areas = [(d.box.x_max - d.box.x_min) * (d.box.y_max - d.box.y_min) for d in people]
    largest = sorted(range(len(people)), key=lambda i: -areas[i])[:3]
    assert [i for i, d in enumerate(people) if d.pose_score > 0] == sorted(largest)
    for i in largest:
        d, got = people[i], points(people[i])
        assert d.pose_score > 0.9 and len(got) >= 20
        for name in got:
            assert inside(got[name], d.box, margin=4), (i, name)
        ankles = [got[n][1] for n in ("left_ankle", "right_ankle") if n in got]
        assert "nose" in got and "left_hip" in got and "right_hip" in got and ankles, i
        hips = (got["left_hip"][1] + got["right_hip"][1]) / 2
        assert got["nose"][1] < hips < min(ankles)


async def test_group_photo_seated_behind_a_table_has_no_legs(
    detect_stub: detect_pb2_grpc.DetectionServiceStub,
    group_photo: np.ndarray,  # noqa: F811 (fixture)
) -> None:
    reply = await detect(detect_stub, group_photo)
    posed = [d for d in reply.detections if d.keypoints]
    assert len(posed) >= 3
    for d in posed:
        got = points(d)
        # The legs are under the table: no knees, ankles or feet, and so no hips.
        assert not set(got) & pose.LOWER_BODY, sorted(set(got) & pose.LOWER_BODY)
        assert "left_eye" in got and inside(got["left_eye"], d.box)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
async def test_no_keypoints_without_people(
    detect_stub: detect_pb2_grpc.DetectionServiceStub, name: str
) -> None:
    reply = await detect(detect_stub, getattr(skimage.data, name)())
    assert all(len(d.keypoints) == 0 for d in reply.detections)


async def test_pose_can_be_turned_off(detect_stub: detect_pb2_grpc.DetectionServiceStub) -> None:
    reply = await detect(detect_stub, campus(), no_pose=True)
    assert reply.people_count == 6
    assert all(len(d.keypoints) == 0 and d.pose_score == 0 for d in reply.detections)
    one = await detect(detect_stub, campus(), max_poses=1)
    assert sum(d.pose_score > 0 for d in one.detections) == 1


@pytest.mark.parametrize("value", [-1, 17])
async def test_max_poses_out_of_range_is_invalid(
    detect_stub: detect_pb2_grpc.DetectionServiceStub, value: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await detect(detect_stub, skimage.data.astronaut(), max_poses=value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_poses" in (err.value.details() or "")


@pytest.mark.slow
def test_onnx_export_matches_the_rebuild_and_tensorflow_lite() -> None:
    """The served ONNX gives the torch rebuild's outputs, and the rebuild gives the TensorFlow
    Lite interpreter's on real person crops (the astronaut, the campus frame's largest walker)."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from services.common.repository import load_entry
    from services.detect import pose_export
    from services.detect.wheel_source import cache_dir

    if not (cache_dir() / pose_export.MEDIAPIPE.filename).is_file():
        pytest.skip(f"the mediapipe wheel is not in {cache_dir()}: run `make models`")
    rois = [
        (skimage.data.astronaut(), pose.roi(np.array([3, 32, 373, 509], np.float32))),
        (campus(), pose.roi(np.array([328, 369, 385, 514], np.float32))),
    ]
    x = np.stack([pose.crop(rgb, r) for rgb, r in rois]).transpose(0, 3, 1, 2).copy()
    entry = load_entry("pose_landmark_full")
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    keypoints, flag = session.run(["keypoints", "pose_score"], {"images": x})
    net = pose_export.landmark_net()
    with torch.no_grad():
        want_points, want_flag = pose_export.heads(net)(torch.from_numpy(x))
        raw, _ = net(torch.from_numpy(x))
    # Pixel coordinates of a 256 px crop (z up to ~400): 1e-2 px; probabilities 1e-4.
    assert np.allclose(keypoints[..., :3], want_points.numpy()[..., :3], atol=1e-2)
    assert np.allclose(keypoints[..., 3:], want_points.numpy()[..., 3:], atol=1e-4)
    assert np.allclose(flag, want_flag.numpy(), atol=1e-4)
    assert flag.min() > 0.9
    # The project's torch backend runs the same ONNX.
    from services.common.config import EngineConfig
    from services.common.engines import create_engine

    engine = create_engine(entry, EngineConfig(backend="torch"))
    engine.load()
    on_torch = engine.infer({"images": x})
    engine.close()
    assert np.allclose(on_torch["keypoints"][..., :3], keypoints[..., :3], atol=1e-2)
    assert np.allclose(on_torch["pose_score"], flag, atol=1e-4)

    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(
        model_content=pose_export.MEDIAPIPE.read(pose_export.LANDMARK_FILE)
    )
    interpreter.allocate_tensors()
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    for row in range(len(x)):
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"],
            x[row : row + 1].transpose(0, 2, 3, 1).copy(),
        )
        interpreter.invoke()
        ref = interpreter.get_tensor(outputs[pose_export.LANDMARKS])
        ref_flag = interpreter.get_tensor(outputs[pose_export.POSE_FLAG])
        assert np.allclose(raw[row].numpy(), ref[0], atol=1e-2, rtol=1e-4)
        assert abs(float(flag[row, 0]) - float(ref_flag[0, 0])) < 1e-4


def test_pose_settings_out_of_range_refuse_to_start() -> None:
    from services.common.config import ConfigError
    from services.detect.config import DetectConfig, PoseConfig
    from services.detect.servicer import DetectServicer

    for bad in (PoseConfig(max_people=17), PoseConfig(min_keypoint_score=1.5)):
        with pytest.raises(ConfigError, match="pose"):
            DetectServicer(DetectConfig(pose=bad))
