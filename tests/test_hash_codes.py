"""Code-level pieces of the hash service: border trimming, semi-supervised projection, the
benchmark's split."""

from __future__ import annotations

import numpy as np
import pytest

from services.hash.corpus import load_photo
from services.hash.preprocess import trim_borders
from services.hash.projection import fit, hamming, l2_normalise, pack, train_itq, train_ssh


def letterboxed(rgb: np.ndarray, bar: int, colour: int = 0, vertical: bool = True) -> np.ndarray:
    h, w = rgb.shape[:2]
    shape = (h + 2 * bar, w, 3) if vertical else (h, w + 2 * bar, 3)
    out = np.full(shape, colour, np.uint8)
    if vertical:
        out[bar : bar + h] = rgb
    else:
        out[:, bar : bar + w] = rgb
    return out


@pytest.mark.parametrize(("vertical", "colour"), [(True, 0), (False, 0), (False, 255)])
def test_trim_borders_recovers_a_letterboxed_photo(vertical: bool, colour: int) -> None:
    photo = load_photo("astronaut")
    boxed = letterboxed(photo, 150, colour, vertical)
    # JPEG-like noise in the bars must not stop the trim.
    noisy = boxed.astype(np.int16) + np.random.default_rng(0).integers(-6, 7, boxed.shape)
    trimmed = trim_borders(np.clip(noisy, 0, 255).astype(np.uint8))
    assert (
        abs(trimmed.shape[0] - photo.shape[0]) <= 2 and abs(trimmed.shape[1] - photo.shape[1]) <= 2
    )


def test_trim_borders_leaves_photos_and_flat_images_whole() -> None:
    for name in ("chelsea", "coffee", "rocket"):
        photo = load_photo(name)
        assert trim_borders(photo).shape == photo.shape
    flat = np.full((120, 200, 3), 17, np.uint8)
    assert trim_borders(flat).shape == flat.shape


def test_ssh_keeps_copy_pairs_closer_than_itq() -> None:
    # 64 "images" in 40 informative dimensions; each has copies that move it along 40 other
    # nuisance dimensions (as edits do). SSH learns from the pairs which dimensions to trust.
    rng = np.random.default_rng(0)
    base = np.zeros((64, 80))
    base[:, :40] = rng.standard_normal((64, 40))
    views, group = [], []
    for i, b in enumerate(base):
        for _ in range(6):
            v = b.copy()
            v[40:] = 1.5 * rng.standard_normal(40)
            views.append(v)
            group.append(i)
    x = np.asarray(views) + 5.0
    g = np.asarray(group)
    pairs = np.asarray([(i, i + 1) for i in range(0, len(x) - 1) if g[i] == g[i + 1]])
    centred = l2_normalise(x) - l2_normalise(x).mean(axis=0)
    ssh = train_ssh(centred, pairs, g, 32, 30, np.random.default_rng(1), whiten_dims=70)
    itq = train_itq(centred, 32, 30, np.random.default_rng(1), whiten_dims=70)

    def pair_distance(matrix: np.ndarray) -> float:
        codes = pack(centred @ matrix)
        return float(np.mean([hamming(codes[a], codes[b][None])[0] for a, b in pairs]))

    assert pair_distance(ssh) < 0.6 * pair_distance(itq)


def test_benchmark_refuses_training_on_evaluated_photos() -> None:
    from bench.bench_hash_copies import FOLDS, PHOTOS, assert_disjoint, fold_photos

    for fold in range(FOLDS):
        train, evaluated = fold_photos(fold)
        assert not set(train) & set(evaluated) and len(train) + len(evaluated) == len(PHOTOS)
        assert_disjoint(np.r_[train, -1], evaluated)
        with pytest.raises(AssertionError):
            assert_disjoint(np.r_[train, evaluated[:1]], evaluated)


def test_fit_still_gives_every_method_and_size() -> None:
    rng = np.random.default_rng(3)
    projection = fit(rng.standard_normal((600, 1280)).astype(np.float32), (64, 128), 7, 5)
    for method in ("itq", "lsh"):
        for bits in (64, 128):
            assert projection.encode(rng.standard_normal((3, 1280)), method, bits).shape == (
                3,
                bits // 8,
            )
