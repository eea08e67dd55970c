"""Write the ghz configurations in loadtest/ (one per RPC) with real sample images inline.

ghz reads each file as-is (``ghz --config loadtest/classify.json`` from the
repository root); ``python -m loadtest.runner`` reads the same files. Image
bytes travel as base64 in ``data`` (protobuf JSON mapping of ``bytes``).
The photos are scikit-image's samples, so the files are reproducible:
``python -m loadtest.make_configs`` rewrites them.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

HERE = Path(__file__).resolve().parent
PROTO_IMPORT_PATHS = ["protos"]


def jpeg_b64(rgb: np.ndarray, quality: int = 85) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("RGB").save(buf, "JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image(name: str) -> dict[str, Any]:
    return {"encoded": jpeg_b64(getattr(skimage.data, name)())}


def config(name: str, proto: str, call: str, port: int, data: Any, **load: Any) -> dict[str, Any]:
    return {
        "name": name,
        "proto": proto,
        "import-paths": PROTO_IMPORT_PATHS,
        "call": call,
        "host": f"127.0.0.1:{port}",
        "insecure": True,
        "timeout": "20s",
        "connections": 1,
        **load,
        "data": data,
    }


def configs() -> dict[str, dict[str, Any]]:
    # Offered rates sit below what one CPU replica of each service sustains on a
    # small machine, so p99 measures service time, not an ever-growing queue;
    # capacity planning raises them (or the step schedule's load-end) per cluster.
    all_features = [
        "FEATURE_CLASSIFY",
        "FEATURE_OCR",
        "FEATURE_FACE",
        "FEATURE_HASH",
        "FEATURE_DETECT",
    ]
    return {
        # Gateway: ramp the offered load to find where p99 bends (ghz "step" schedule).
        "gateway_analyze.json": config(
            "gateway-analyze",
            "visionmesh/v1/gateway.proto",
            "visionmesh.v1.GatewayService.Analyze",
            50050,
            {"image": image("astronaut"), "features": all_features, "options": {"no_cache": True}},
            concurrency=4,
            **{
                "load-schedule": "step",
                "load-start": 1,
                "load-step": 1,
                "load-end": 4,
                "load-step-duration": "10s",
                "load-max-duration": "40s",
            },
            duration="40s",
        ),
        "gateway_analyze_batch.json": config(
            "gateway-analyze-batch",
            "visionmesh/v1/gateway.proto",
            "visionmesh.v1.GatewayService.AnalyzeBatch",
            50050,
            {
                "images": [image("chelsea"), image("astronaut"), image("coffee"), image("text")],
                "features": ["FEATURE_CLASSIFY", "FEATURE_HASH"],
                "options": {"no_cache": True},
            },
            concurrency=2,
            rps=1,
            duration="30s",
        ),
        "classify.json": config(
            "classify",
            "visionmesh/v1/classify.proto",
            "visionmesh.v1.ClassifyService.Classify",
            50051,
            {"image": image("chelsea"), "top_k": 5},
            concurrency=4,
            rps=8,
            duration="30s",
        ),
        "ocr.json": config(
            "ocr-recognize",
            "visionmesh/v1/ocr.proto",
            "visionmesh.v1.OcrService.Recognize",
            50052,
            {"image": image("text")},
            concurrency=2,
            rps=1,
            duration="30s",
        ),
        "face.json": config(
            "face-detect",
            "visionmesh/v1/face.proto",
            "visionmesh.v1.FaceService.Detect",
            50053,
            {"image": image("astronaut")},
            concurrency=4,
            rps=4,
            duration="30s",
        ),
        "hash.json": config(
            "hash-encode",
            "visionmesh/v1/hash.proto",
            "visionmesh.v1.HashService.Encode",
            50054,
            {"frames": [image("chelsea")], "bits": 128},
            concurrency=4,
            rps=16,
            duration="30s",
        ),
        "detect.json": config(
            "detect-objects",
            "visionmesh/v1/detect.proto",
            "visionmesh.v1.DetectionService.DetectObjects",
            50055,
            {"image": image("astronaut")},
            concurrency=4,
            rps=8,
            duration="30s",
        ),
    }


def main() -> None:
    for filename, cfg in configs().items():
        (HERE / filename).write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"wrote loadtest/{filename}")


if __name__ == "__main__":
    main()
