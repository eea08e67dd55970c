"""GPU verification kit: one prepared run that checks the CUDA path within a short GPU window.

``make gpu-kit`` (``tools/gpu_check/prepare.py``) fills ``.gpu-kit/`` with the
wheels the GPU machine's image lacks, a subset of the model repository and a
few JPEG photos; ``bash tools/gpu_check/run.sh`` on the GPU machine installs
the wheels and runs ``python -m tools.gpu_check``, which writes JSON and
markdown into one folder. ``--dry-run`` runs the same phases on CPU with tiny
sizes (the test suite does this). See docs/gpu.md.
"""

from __future__ import annotations

KIT_DIR = ".gpu-kit"
# The model subset inside the kit, unpacked on the GPU machine before the run.
MODELS_ARCHIVE = "model_repository.zip"
# Ignored paths the GPU run needs besides the tracked tree (the generated gRPC code travels as
# built).
CARRY_PATHS = (KIT_DIR, "visionmesh/v1")
# What the run may carry in all: tracked + untracked-not-ignored files + CARRY_PATHS.
CARRY_LIMIT_BYTES = 64 * 1024 * 1024

# Classifier, safety model, the face detector (RetinaFace, the default), one OCR model (the
# text-direction classifier:
# the detector and recogniser are 9.5 and 21 MiB and do not fit beside the others).
KIT_MODELS = (
    "efficientnet_lite0",
    "open_nsfw",
    "face_retinaface",
    "ppocr_cls",
)

# Distributions the torch backend, the classify service and the gateway import that the GPU
# image (Python 3.12, torch + CUDA, torchvision, pillow, onnxruntime, numpy, opencv) lacks.
# Versions come from requirements.txt so the kit runs what CI tests.
KIT_WHEELS = (
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "onnx",
    "onnx2fx",
    "ml_dtypes",
    "PyYAML",
    "prometheus_client",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation",
    "opentelemetry-instrumentation-grpc",
    "opentelemetry-semantic-conventions",
    "wrapt",
    "packaging",
)

# Modules the run imports; checked right after the install so a missing one is named at once.
REQUIRED_IMPORTS = (
    "numpy",
    "cv2",
    "PIL",
    "torch",
    "onnxruntime",
    "onnx",
    "onnx2fx",
    "yaml",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "google.protobuf",
    "prometheus_client",
    "opentelemetry.sdk",
    "opentelemetry.instrumentation.grpc",
)
