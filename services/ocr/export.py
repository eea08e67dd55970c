"""Model repository exports of the OCR service: PP-OCR det / direction cls / rec.

The three ONNX files ship inside the ``rapidocr`` wheel; they are copied as
they are (no conversion), and the recogniser's character dictionary, which
lives in the rec model's ONNX metadata (key ``character``), is written next to
it as ``dict.txt``. Nothing is downloaded: rapidocr's other model variants are
fetched on demand by rapidocr itself, which is never run here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from services.common.exports import ModelExport, package_provenance
from services.common.repository import BatchingPolicy

# PaddleOCR models were trained on OpenCV (BGR) images scaled to [-1, 1].
PADDLE_NORMALISATION = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "scale": 1 / 255.0,
    "color": "BGR",
    "layout": "NCHW",
}


def _rapidocr_model(file_name: str) -> Path:
    import rapidocr

    path = Path(rapidocr.__file__).parent / "models" / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install rapidocr==3.10.0 (it ships this model)"
        )
    return path


def _copy(file_name: str, out: Path) -> dict[str, Any]:
    shutil.copyfile(_rapidocr_model(file_name), out / "model.onnx")
    provenance = package_provenance("rapidocr")
    provenance["source_file"] = f"rapidocr/models/{file_name}"
    provenance["model_license"] = "Apache-2.0 (PaddleOCR; rapidocr MODEL_LICENSES.md)"
    return provenance


def build_det(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    provenance = _copy("PP-OCRv6_det_small.onnx", out)
    config = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "fetch_name_0", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
        "max_batch_size": 4,
        # Height and width must be multiples of 32 (the DB head upsamples by 32).
        "preprocessing": {**PADDLE_NORMALISATION, "multiple": 32},
    }
    return config, provenance


def build_cls(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    provenance = _copy("ch_ppocr_mobile_v2.0_cls_mobile.onnx", out)
    (out / "labels.txt").write_text("0\n180\n", encoding="utf-8")
    config = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 48, 192]}],
        "outputs": [
            {"name": "save_infer_model/scale_0.tmp_1", "dtype": "float32", "shape": [-1, 2]}
        ],
        "max_batch_size": 64,
        "preprocessing": {**PADDLE_NORMALISATION, "height": 48, "width": 192},
        "labels": "labels.txt",
    }
    return config, provenance


def build_rec(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import onnx

    provenance = _copy("PP-OCRv6_rec_small.onnx", out)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError(
            "the rec model carries no 'character' metadata: not the expected PP-OCR rec model"
        )
    characters = meta["character"].splitlines()
    # One character a line; CTC index 0 is the blank and the last index a space (added by the
    # decoder).
    (out / "dict.txt").write_text("\n".join(characters) + "\n", encoding="utf-8")
    provenance["dictionary"] = {
        "from": "ONNX metadata key 'character'",
        "characters": len(characters),
    }
    config = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 48, -1]}],
        "outputs": [
            {"name": "fetch_name_0", "dtype": "float32", "shape": [-1, -1, len(characters) + 2]}
        ],
        "max_batch_size": 32,
        "preprocessing": {**PADDLE_NORMALISATION, "height": 48},
        "dictionary": "dict.txt",
    }
    return config, provenance


MODELS = [
    ModelExport("ppocr_det", 1, 1, build_det, BatchingPolicy(4, max_queue_delay_us=1000)),
    ModelExport("ppocr_cls", 1, 1, build_cls, BatchingPolicy(64, max_queue_delay_us=2000)),
    ModelExport("ppocr_rec", 1, 1, build_rec, BatchingPolicy(32, max_queue_delay_us=2000)),
]
