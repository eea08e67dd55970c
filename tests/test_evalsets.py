"""The held-out evaluation sets never contain an image a tuned component saw (bench/evalsets.py)."""

from __future__ import annotations

import pytest

from bench import evalsets
from services.hash.corpus import ALL_PHOTOS


@pytest.mark.parametrize("task", sorted(evalsets.TUNING))
def test_heldout_sources_are_not_tuning_sources(task: str) -> None:
    try:
        evalsets.check_split(task)  # by name and by pixels
    except FileNotFoundError as missing:
        pytest.fail(str(missing))


def test_the_split_check_catches_a_tuning_image_under_another_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "chelsea" is in the OCR tuning set; scikit-image also ships it as "cat".
    monkeypatch.setitem(evalsets.HELDOUT, "ocr-text-free", ("skimage:cat",))
    with pytest.raises(AssertionError, match="same pixels"):
        evalsets.check_split("ocr-text-free")
    monkeypatch.setitem(evalsets.HELDOUT, "ocr-text-free", ("skimage:chelsea",))
    with pytest.raises(AssertionError, match="used in tuning"):
        evalsets.check_split("ocr-text-free")


def test_the_regression_tests_images_are_declared_as_tuning() -> None:
    """What the regression tests use must be in TUNING, so it can never be held out."""
    from tests.test_classify_quality import PHOTOS as QUALITY_PHOTOS
    from tests.test_ocr_service import NO_TEXT_PHOTOS

    assert {f"skimage:{p}" for p in QUALITY_PHOTOS} <= evalsets.TUNING["quality"]
    ocr = {f"skimage:{name.split()[0]}" for name in NO_TEXT_PHOTOS}
    assert ocr <= evalsets.TUNING["ocr-text-free"]
    assert {f"skimage:{p}" for p in ALL_PHOTOS} == evalsets.TUNING["hash"]
    assert "insightface:t1.jpg" in evalsets.TUNING["face"]
