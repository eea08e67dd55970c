"""Image quality on real photos and their degraded versions: each degradation flips exactly its
verdict.

The thresholds were chosen on these photos and degradations, so the tests on them are regression
tests; accuracy on pictures they never saw is measured by bench/bench_heldout.py.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data

from services.classify.config import QualityConfig
from services.classify.quality import assess, measure

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def blurred(rgb: np.ndarray) -> np.ndarray:
    # Gaussian blur of 0.5 % of the long side: a slightly out-of-focus shot.
    return cv2.GaussianBlur(rgb, (0, 0), max(rgb.shape[:2]) * 0.005)


def darkened(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) * 0.25).astype(np.uint8)


def overexposed(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + 150, 0, 255).astype(np.uint8)


def flattened(rgb: np.ndarray) -> np.ndarray:
    # Squeeze every pixel toward the mean (haze, a washed-out scan).
    x = rgb.astype(np.float32)
    return np.clip(x.mean() + (x - x.mean()) * 0.25, 0, 255).astype(np.uint8)


DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], list[str]]] = {
    "blurred": (blurred, ["quality/blurred"]),
    "darkened": (darkened, ["quality/dark"]),
    "overexposed": (overexposed, ["quality/overexposed"]),
    "flattened": (flattened, ["quality/low_contrast"]),
}


@pytest.mark.regression
@pytest.mark.parametrize("name", PHOTOS)
def test_regression_tuning_photos_have_no_quality_verdict(name: str) -> None:
    report = assess(getattr(skimage.data, name)(), QualityConfig())
    assert report.verdicts == [], (report.brightness, report.contrast, report.sharpness)


@pytest.mark.regression
@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
@pytest.mark.parametrize("name", PHOTOS)
def test_regression_each_tuning_degradation_flips_exactly_its_verdict(
    name: str, degradation: str
) -> None:
    transform, expected = DEGRADATIONS[degradation]
    report = assess(transform(getattr(skimage.data, name)()), QualityConfig())
    assert [v.name for v in report.verdicts] == expected, (
        report.brightness,
        report.contrast,
        report.sharpness,
    )
    assert all(0.5 <= v.score <= 1.0 for v in report.verdicts)


def test_measures_do_not_depend_on_upload_resolution() -> None:
    rgb = skimage.data.astronaut()
    large = cv2.resize(rgb, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    base, big = measure(rgb), measure(large)
    assert big[0] == pytest.approx(base[0], abs=1.0)
    assert big[1] == pytest.approx(base[1], rel=0.05)
    # Interpolating up and averaging back down softens a little, far from the blur threshold.
    assert big[2] == pytest.approx(base[2], rel=0.5)
    assert big[2] > 2 * QualityConfig().blurred_below
    # A thumbnail is measured as it is (never upscaled), so it is not called blurred.
    thumb = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA)
    assert assess(thumb, QualityConfig()).verdicts == []


def test_flat_grey_image_is_low_contrast_and_blurred() -> None:
    report = assess(np.full((300, 400, 3), 128, np.uint8), QualityConfig())
    assert [v.name for v in report.verdicts] == ["quality/low_contrast", "quality/blurred"]
