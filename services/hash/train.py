"""Train the hash projections (PCA-ITQ, plus the LSH baseline) on the augmented photo corpus.

Reproducible: a fixed seed drives the augmentations, the ITQ initial rotations
and the LSH hyperplanes. ``python -m services.hash.train --out DIR`` writes
``projection.npz`` and ``training.json``; ``visionmesh models build hash_itq``
runs the same thing into the model repository.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.common.repository import default_root, load_entry
from services.hash.config import SUPPORTED_BITS
from services.hash.corpus import ALL_PHOTOS, training_corpus
from services.hash.preprocess import normalise_view, to_batch
from services.hash.projection import WHITEN_DIMS, Projection, fit

SEED = 20261123
PER_PHOTO = 48
# Frames per photo of the PyAV-made clip (corpus.video_frames).
VIDEO_FRAMES = 8
# Random views per photo, each with two edited copies (corpus.edited_views).
VIEWS_PER_PHOTO = 24
# Collages of 2-4 crops of different photos (corpus.collages).
COLLAGES = 250
ITERATIONS = 50
# The view features are computed from (Encoder applies the same, read from config.yaml): letterbox
# bars trimmed and colour dropped. Measured in bench/bench_hash_copies.py: copies found at a 1e-7
# false-match rate 0.82 -> 0.94 at 128 bits (letterbox 0.35 -> 0.97, greyscale 0.83 -> 1.00).
VIEW = {"trim_borders": True, "grey": True}


def onnx_features(
    images: list[np.ndarray], model_root: Path | None = None, batch: int = 32
) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features of ``images``, computed with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    entry = load_entry("efficientnet_lite0", 1, model_root)
    opts = ort.SessionOptions()
    session = ort.InferenceSession(str(entry.onnx_path), opts, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(images), batch):
        x = to_batch(images[start : start + batch], entry.preprocessing)
        (features,) = session.run(["features"], {"images": x})
        out.append(features)
    return np.concatenate(out).astype(np.float32)


def train(
    out: Path,
    seed: int = SEED,
    per_photo: int = PER_PHOTO,
    model_root: Path | None = None,
    photos: tuple[str, ...] = ALL_PHOTOS,
) -> dict[str, Any]:
    """Build the corpus, extract features, fit; write ``projection.npz``; return the training
    record."""
    start = time.perf_counter()
    images = training_corpus(photos, per_photo, VIDEO_FRAMES, VIEWS_PER_PHOTO, COLLAGES, seed)
    views = [normalise_view(x, VIEW["trim_borders"], VIEW["grey"]) for x in images]
    features = onnx_features(views, model_root)
    projection: Projection = fit(features, SUPPORTED_BITS, seed, ITERATIONS)
    projection.save(out / "projection.npz")
    return {
        "corpus": {
            "source": "scikit-image sample photos",
            "photos": list(photos),
            "augmentations_per_photo": per_photo,
            "video_frames_per_photo": VIDEO_FRAMES,
            "edited_views_per_photo": VIEWS_PER_PHOTO,
            "images_per_edited_view": 3,
            "collages": COLLAGES,
            "images": len(images),
        },
        "feature_model": "efficientnet_lite0 v1 output 'features' (1280-d pooled)",
        "view": VIEW,
        "seed": seed,
        "itq_iterations": ITERATIONS,
        "itq_whitened_pca_dims": WHITEN_DIMS,
        "bits": list(SUPPORTED_BITS),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--per-photo", type=int, default=PER_PHOTO)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record = train(args.out, args.seed, args.per_photo, default_root())
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
