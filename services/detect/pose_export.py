"""Model repository export of the pose landmark network (``pose_landmark_full``).

MediaPipe's BlazePose GHUM landmark model, read out of the ``mediapipe==0.10.21``
wheel (Apache-2.0; fetched, never installed: ``wheel_source.py``), rebuilt in
torch from the TensorFlow Lite file's own operators and weights
(``tflite_net.py``) and exported to ONNX opset 17. Only the two heads the
service uses are kept: the 39 x 5 landmark vector (the first 33 are the body's
keypoints) and the pose presence flag; the segmentation, heatmap and world
landmark branches are left out.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from services.detect.pose import INPUT_SIZE, KEYPOINT_NAMES
from services.detect.wheel_source import PinnedWheel

OPSET = 17
MEDIAPIPE = PinnedWheel(
    package="mediapipe",
    version="0.10.21",
    filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    platform="manylinux_2_28_x86_64",
    python_version="3.11",
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    license="Apache-2.0",
)
LANDMARK_FILE = "mediapipe/modules/pose_landmark/pose_landmark_full.tflite"
# The file's output tensors: 39 landmarks x (x, y, z, visibility, presence) and the pose flag.
LANDMARKS, POSE_FLAG = "Identity", "Identity_1"
LANDMARK_COUNT, LANDMARK_VALUES = 39, 5


def landmark_net() -> Any:
    """The torch rebuild of ``pose_landmark_full``: raw landmark vector and pose flag."""
    from services.detect.tflite_model import TfliteModel
    from services.detect.tflite_net import TfliteNet

    return TfliteNet(TfliteModel(MEDIAPIPE.read(LANDMARK_FILE)), [LANDMARKS, POSE_FLAG]).eval()


def heads(net: Any) -> Any:
    """The served outputs: the 33 body keypoints with visibility and presence as probabilities."""
    import torch

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raw, flag = self.net(images)
            points = raw.reshape(-1, LANDMARK_COUNT, LANDMARK_VALUES)[:, : len(KEYPOINT_NAMES)]
            # x, y (input pixels) and z stay; visibility and presence are logits.
            return torch.cat([points[..., :3], torch.sigmoid(points[..., 3:])], dim=2), flag

    return Heads().eval()


def build_pose_landmark(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    data = MEDIAPIPE.read(LANDMARK_FILE)
    net = landmark_net()
    model = heads(net)
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        points, flag = model(dummy)
    if points.shape[1:] != (len(KEYPOINT_NAMES), LANDMARK_VALUES) or flag.shape[1:] != (1,):
        raise ValueError(f"pose landmark outputs {points.shape} {flag.shape}")
    with warnings.catch_warnings():
        # The input size is fixed, so the padding computed from traced shapes is a constant.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(out / "model.onnx"),
            input_names=["images"],
            output_names=["keypoints", "pose_score"],
            dynamic_axes={n: {0: "batch"} for n in ("images", "keypoints", "pose_score")},
            opset_version=OPSET,
            dynamo=False,
        )
    (out / "labels.txt").write_text("\n".join(KEYPOINT_NAMES) + "\n")
    config = {
        "inputs": [
            {"name": "images", "dtype": "float32", "shape": [-1, 3, INPUT_SIZE, INPUT_SIZE]}
        ],
        "outputs": [
            {
                "name": "keypoints",
                "dtype": "float32",
                "shape": [-1, len(KEYPOINT_NAMES), LANDMARK_VALUES],
            },
            {"name": "pose_score", "dtype": "float32", "shape": [-1, 1]},
        ],  # fmt: skip
        "max_batch_size": 64,
        # A square crop around one person, RGB in [0, 1] (see services/detect/pose.py).
        "preprocessing": {
            "size": INPUT_SIZE,
            "mean": 0.0,
            "scale": 1 / 255,
            "layout": "NCHW",
            "color": "RGB",
        },
        "labels": "labels.txt",
    }
    provenance = MEDIAPIPE.provenance(LANDMARK_FILE, data)
    provenance["weights_attribution"] = "MediaPipe BlazePose GHUM 3D landmarks (full)"
    provenance["rebuilt_weights"] = sum(p.numel() for p in net.parameters())
    provenance["exported_with"] = {"torch": torch.__version__, "opset": OPSET}
    return config, provenance
