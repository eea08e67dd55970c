"""Copy detection at scale: real photos, real edits, 1M (and 10M) distractor codes shaped like real
content.

Originals: the two halves (split along the long side) of 20 scikit-image photos, 40
images. Queries: every original under each edit of ``EDITS`` (the everyday re-upload
edits) and ``HARD_EDITS`` (composites). The projections are trained per fold: the
photos are split in two folds, each fold's queries are encoded by a projection learned
from the *other* fold's photos only (``assert_disjoint`` enforces it), with the served
recipe on a smaller corpus (the CPU budget of this benchmark).

Database for a query: the 40 originals, real distractors (the training corpus images
and the copies of every *other* photo; images derived from the query's own photo are
left out, its other half too, so the only relevant item is its original) and ``--items`` codes of
features
sampled from a Gaussian fitted to the training fold's real features (top 256 principal
directions plus an isotropic rest), L2-normalised and pushed through the same projection.

False-match rate: the Hamming radius at which a query matches a given share of the
distractors, measured over all (query, distractor) pairs; "found at FMR 1e-7" is the
share of copies whose original lies within that radius. PDQ and pHash cannot be sampled
in feature space: their radius comes from a normal fit to their query-vs-real-distractor
distances, and their recall@k from the real database.

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_hash_copies [--items 1000000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

# One BLAS thread: on a shared, loaded machine threaded BLAS spins on tiny matrices (70x slower
# here).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from bench.harness import Report  # noqa: E402
from services.hash.config import ExactTierConfig  # noqa: E402
from services.hash.corpus import (  # noqa: E402
    ALL_PHOTOS,
    brightness,
    center_fraction,
    collages,
    grey,
    jpeg,
    load_photo,
    photo_corpus,
    resize,
    text_overlay,
)

EXACT_TIER = ExactTierConfig()  # the service's exact-copy tier, as configured by default
PHOTOS = tuple(p for p in ALL_PHOTOS if p != "checkerboard")  # its halves are the same pixels
FOLDS = 2
# Smaller than the served corpus (train.py): the benchmark runs every fold on 2 shared cores.
PER_PHOTO, VIDEO_FRAMES, VIEWS_PER_PHOTO, COLLAGES = 24, 8, 12, 120
TRAIN_SEED = 20261123


def caption_band(rgb: np.ndarray) -> np.ndarray:
    """A solid black band over the bottom 15 % with white text, as burnt-in captions look."""
    img = Image.fromarray(rgb).copy()
    w, h = img.size
    band = max(8, h * 15 // 100)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, h - band, w, h), fill=(0, 0, 0))
    font = ImageFont.load_default(size=max(8, band * 6 // 10))
    draw.text((w // 20, h - band + band // 6), "so good!! #repost", fill=(255, 255, 255), font=font)
    return np.asarray(img)


def letterbox(rgb: np.ndarray, aspect: float = 16 / 9) -> np.ndarray:
    """Centred in a black 16:9 frame (pillarbox for tall images), as a re-encoded video shows it."""
    h, w = rgb.shape[:2]
    out_w, out_h = (round(h * aspect), h) if w / h < aspect else (w, round(w / aspect))
    canvas = np.zeros((out_h, out_w, 3), np.uint8)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    canvas[top : top + h, left : left + w] = rgb
    return canvas


def rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).rotate(degrees, resample=Image.Resampling.BILINEAR))


EDITS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q30": lambda x: jpeg(x, 30),
    "half_size": lambda x: resize(x, 0.5),
    "crop_90": lambda x: center_fraction(x, 0.9),
    "brightness+30%": lambda x: brightness(x, 1.3),
    "greyscale": grey,
    "caption_band": caption_band,
    "letterbox": letterbox,
}
HARD_EDITS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "crop_70+jpeg_q30": lambda x: jpeg(center_fraction(x, 0.7), 30),
    "quarter_size+grey": lambda x: grey(resize(x, 0.25)),
    "rotate_8+darker": lambda x: brightness(rotate(x, 8), 0.7),
    "mirror+crop_75+text": lambda x: text_overlay(
        center_fraction(np.ascontiguousarray(x[:, ::-1]), 0.75)
    ),
    "letterbox+caption+jpeg_q40": lambda x: jpeg(letterbox(caption_band(x)), 40),
}

CACHE = Path(os.environ.get("HASH_BENCH_CACHE", "/tmp/visionmesh-hash-copies-cache"))


def originals() -> tuple[list[np.ndarray], np.ndarray]:
    """The two halves of each photo (split along the long side) and each half's photo index."""
    images, photo = [], []
    for p, name in enumerate(PHOTOS):
        rgb = load_photo(name)
        h, w = rgb.shape[:2]
        halves = (rgb[:, : w // 2], rgb[:, w // 2 :]) if w >= h else (rgb[: h // 2], rgb[h // 2 :])
        images.extend(np.ascontiguousarray(x) for x in halves)
        photo.extend([p, p])
    return images, np.asarray(photo)


def image_sets() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Every image the benchmark encodes, with its source photo (-1 for collages of several)."""
    orig, orig_photo = originals()
    queries, query_photo = [], []
    for edit in {**EDITS, **HARD_EDITS}.values():
        queries.extend(edit(x) for x in orig)
        query_photo.extend(orig_photo)
    corpus, source = photo_corpus(PHOTOS, PER_PHOTO, VIDEO_FRAMES, VIEWS_PER_PHOTO, TRAIN_SEED)
    sets = {
        "originals": (orig, orig_photo),
        "queries": (queries, np.asarray(query_photo)),
        "corpus": (corpus, source),
    }
    for f in range(FOLDS):
        train = tuple(p for i, p in enumerate(PHOTOS) if i % FOLDS != f)
        sets[f"collages{f}"] = (collages(train, COLLAGES, TRAIN_SEED + 2), np.full(COLLAGES, -1))
    return sets


def view(rgb: np.ndarray, variant: str) -> np.ndarray:
    """The pixels a feature variant looks at: as served, or bars trimmed and colour dropped
    (mirrored)."""
    from services.hash.preprocess import normalise_view

    if variant == "plain":
        return rgb
    out = normalise_view(rgb, trim=True, grey=True)
    return np.ascontiguousarray(out[:, ::-1]) if variant == "trim_grey_mirror" else out


def features(name: str, images: list[np.ndarray], variant: str) -> np.ndarray:
    from services.hash.train import onnx_features

    path = CACHE / f"{variant}-{name}.npy"
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    out = onnx_features([view(x, variant) for x in images])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    print(
        f"features {variant}/{name}: {len(images)} images in {time.perf_counter() - start:.0f}s",
        flush=True,
    )
    return out


def extract(variants: tuple[str, ...]) -> None:
    names = ["originals", "queries", "corpus", *(f"collages{f}" for f in range(FOLDS))]
    if all((CACHE / f"{v}-{n}.npy").exists() for v in variants for n in names):
        return
    sets = image_sets()
    for variant in variants:
        for name, (images, _) in sets.items():
            features(name, images, variant)


def labels() -> dict[str, np.ndarray]:
    """Source photo of every row of every image set (cached with the features)."""
    path = CACHE / "labels.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    out = {name: photo for name, (_, photo) in image_sets().items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def variant_features(name: str, variant: str) -> np.ndarray:
    """Cached features; ``trim_grey+mirror`` is the mean of a view's and its mirror's L2-normalised
    features."""
    from services.hash.projection import l2_normalise

    if variant == "trim_grey+mirror":
        return (
            l2_normalise(np.load(CACHE / f"trim_grey-{name}.npy"))
            + l2_normalise(np.load(CACHE / f"trim_grey_mirror-{name}.npy"))
        ) / 2
    return np.load(CACHE / f"{variant}-{name}.npy")


def fold_photos(fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training photo indices, evaluation photo indices) of a fold."""
    index = np.arange(len(PHOTOS))
    return index[index % FOLDS != fold], index[index % FOLDS == fold]


def assert_disjoint(train_sources: np.ndarray, eval_photos: np.ndarray) -> None:
    """The split the benchmark rests on: no training image comes from an evaluated photo."""
    leaked = np.intersect1d(train_sources[train_sources >= 0], eval_photos)
    if len(leaked):
        raise AssertionError(f"training images from evaluated photos {leaked.tolist()}")


def copy_pairs(corpus_source: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Copy pairs among the corpus ``rows`` (indices into the corpus): each edited view and its two
    edits."""
    n_views = len(PHOTOS) * VIEWS_PER_PHOTO * 3
    first = len(corpus_source) - n_views
    position = {int(r): i for i, r in enumerate(rows)}
    pairs = []
    for start in range(first, len(corpus_source), 3):
        if start in position:
            v, e1, e2 = (position[start + k] for k in range(3))
            pairs.extend(((v, e1), (v, e2), (e1, e2)))
    return np.asarray(pairs, np.int64)


class Fold:
    """One fold's training features, projections and Gaussian distractor model for a feature
    variant."""

    def __init__(self, variant: str, fold: int, lab: dict[str, np.ndarray]) -> None:
        from services.hash.projection import fit, l2_normalise, train_ssh

        self.train_photos, self.eval_photos = fold_photos(fold)
        corpus_rows = np.flatnonzero(np.isin(lab["corpus"], self.train_photos))
        train = np.concatenate(
            [
                variant_features("corpus", variant)[corpus_rows],
                variant_features(f"collages{fold}", variant),
            ]
        )
        train_sources = np.r_[lab["corpus"][corpus_rows], lab[f"collages{fold}"]]
        assert_disjoint(train_sources, self.eval_photos)
        self.projection = fit(train, (64, 128, 256), TRAIN_SEED, 50)
        normalised = l2_normalise(train.astype(np.float64))
        centred = normalised - self.projection.mean
        pairs = copy_pairs(lab["corpus"], corpus_rows)
        groups = np.r_[lab["corpus"][corpus_rows], -1 - np.arange(COLLAGES)]
        for bits in (64, 128, 256):
            self.projection.matrices[("ssh", bits)] = train_ssh(
                centred, pairs, groups, bits, 50, np.random.default_rng(TRAIN_SEED + bits)
            )
        # Gaussian fitted to the real (normalised) training features: top principal directions +
        # isotropic rest.
        self.mu = normalised.mean(axis=0)
        _, s, vt = np.linalg.svd(normalised - self.mu, full_matrices=False)
        rank = min(256, len(s) - 1)
        variances = s**2 / (len(normalised) - 1)
        self.u, self.scale = vt[:rank].T, np.sqrt(variances[:rank])
        self.rest = float(variances[rank:].sum() / (normalised.shape[1] - rank))

    def sampled_codes(self, method: str, bits: int, count: int, seed: int) -> np.ndarray:
        """Codes of ``count`` features drawn from the fitted Gaussian, normalised and projected.

        Low-rank: x = mu + U (s*z) + e, e isotropic outside U; x @ W and |x| are computed
        without forming x (e @ W is drawn from its own covariance, |e|^2 from its mean).
        """
        w = self.projection.matrices[(method, bits)].astype(np.float64)
        uw = self.u.T @ w
        rest_cov = self.rest * (w.T @ w - uw.T @ uw)
        eigenvalues, eigenvectors = np.linalg.eigh(rest_cov)
        chol = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        mu_w, mean_w, mu_u = (
            self.mu @ w,
            self.projection.mean.astype(np.float64) @ w,
            self.mu @ self.u,
        )
        rest_norm = self.rest * (len(self.mu) - len(self.scale))
        rng = np.random.default_rng(seed)
        out = []
        for start in range(0, count, 250_000):
            n = min(250_000, count - start)
            z = rng.standard_normal((n, len(self.scale)), dtype=np.float32) * self.scale.astype(
                np.float32
            )
            xw = (
                mu_w
                + z @ uw.astype(np.float32)
                + rng.standard_normal((n, bits), dtype=np.float32) @ chol.T.astype(np.float32)
            )
            norm = np.sqrt(
                self.mu @ self.mu
                + 2 * z @ mu_u.astype(np.float32)
                + (z * z).sum(axis=1)
                + rest_norm
            )
            out.append(np.packbits(xw / norm[:, None] - mean_w > 0, axis=1))
        return np.concatenate(out)


def phash(rgb: np.ndarray, size: int = 16) -> np.ndarray:
    """DCT perceptual hash, ``size**2`` bits: grey 4*size square, 2-D DCT, top-left ``size`` block
    vs its median."""
    from scipy.fft import dctn

    side = 4 * size
    small = np.asarray(
        Image.fromarray(rgb).convert("L").resize((side, side), Image.Resampling.LANCZOS), np.float64
    )
    block = dctn(small, norm="ortho")[:size, :size].ravel()
    return np.packbits(block > np.median(block))


def pixel_codes(method: str) -> dict[str, np.ndarray]:
    """PDQ (the service's exact tier: ``services.hash.exact.pdq``, 256 bits), PDQ of the
    bar-trimmed image, or pHash codes of every image set (cached); PDQ's quality score of each
    image under ``<set>.quality``."""
    path = CACHE / f"{method}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    from services.hash.exact import pdq
    from services.hash.preprocess import trim_borders

    def code(x: np.ndarray) -> tuple[np.ndarray, int]:
        if method == "pdq_trimmed":
            x = trim_borders(x)
        if method.startswith("pdq"):
            return pdq(x, EXACT_TIER.max_side)
        return phash(x), 100

    out = {}
    for name, (images, _) in image_sets().items():
        pairs = [code(x) for x in images]
        out[name] = np.stack([c for c, _ in pairs])
        out[f"{name}.quality"] = np.asarray([q for _, q in pairs])
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between two sets of packed codes."""
    ua, ub = (
        np.unpackbits(a, axis=1).astype(np.float32),
        np.unpackbits(b, axis=1).astype(np.float32),
    )
    return (ua @ (1 - ub).T + (1 - ua) @ ub.T).astype(np.int32)


EDIT_NAMES = tuple(EDITS) + tuple(HARD_EDITS)


class Scores:
    """Per query: distance to its original, and the false-match tail of its distractors."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.own: list[np.ndarray] = []
        self.rank: list[np.ndarray] = []
        self.edit: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []  # each query's row in the "queries" set
        self.pairs = 0
        self.tail = np.zeros(bits + 1, np.int64)  # distractor pairs at each distance
        self.real: list[np.ndarray] = []  # real-distractor distances (for the normal fit)
        self.search_ms: list[float] = []

    def add(
        self,
        own: np.ndarray,
        real: np.ndarray,
        real_ok: np.ndarray,
        sampled: np.ndarray | None,
        n_sampled: int,
        edit: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        rank = 1 + ((real <= own[:, None]) & real_ok).sum(axis=1)
        for row, ok in zip(real, real_ok, strict=True):
            self.tail += np.bincount(row[ok], minlength=self.bits + 1)
            self.real.append(row[ok])
        self.pairs += int(real_ok.sum())
        if sampled is not None:
            rank += (sampled <= own[:, None]).sum(axis=1)
            self.tail += np.bincount(sampled.ravel(), minlength=self.bits + 1)
            self.pairs += len(own) * n_sampled
        self.own.append(own)
        self.rank.append(rank)
        self.edit.append(edit)
        self.rows.append(rows)

    def radius(self, fmr: float) -> int:
        """Largest radius whose distractor share is <= fmr (-1: none)."""
        share = np.cumsum(self.tail) / self.pairs
        ok = np.flatnonzero(share <= fmr)
        return int(ok[-1]) if len(ok) else -1

    def normal_radius(self, fmr: float) -> int:
        from scipy.stats import norm

        real = np.concatenate(self.real).astype(np.float64)
        return int(np.floor(real.mean() + real.std() * norm.ppf(fmr)))

    def summary(self, sampled: bool) -> dict[str, object]:
        own, rank, edit, rows = (
            np.concatenate(x) for x in (self.own, self.rank, self.edit, self.rows)
        )
        everyday = np.isin(edit, list(EDITS))
        r6, r7 = (self.radius(f) if sampled else self.normal_radius(f) for f in (1e-6, 1e-7))
        return {
            "recall@1": float(np.mean(rank[everyday] == 1)),
            "recall@10": float(np.mean(rank[everyday] <= 10)),
            "found@1e-6": float(np.mean(own[everyday] <= r6)),
            "found@1e-7": float(np.mean(own[everyday] <= r7)),
            "hard recall@1": float(np.mean(rank[~everyday] == 1)),
            "hard found@1e-7": float(np.mean(own[~everyday] <= r7)),
            "radius@1e-7": r7,
            "copy distance median/p95": (
                float(np.median(own[everyday])) / self.bits,
                float(np.percentile(own[everyday], 95)) / self.bits,
            ),
            "per edit recall@1": {e: float(np.mean(rank[edit == e] == 1)) for e in EDIT_NAMES},
            "per edit found@1e-7": {e: float(np.mean(own[edit == e] <= r7)) for e in EDIT_NAMES},
            "search ms/query": float(np.mean(self.search_ms)) if self.search_ms else float("nan"),
            "distractor distance mean/std": (
                float(np.concatenate(self.real).mean()) / self.bits,
                float(np.concatenate(self.real).std()) / self.bits,
            ),
            "own": own, "rank": rank, "edit": edit, "rows": rows,
        }  # fmt: skip


def query_layout(lab: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each query's original (row in ``originals``) and edit name."""
    n = len(lab["originals"])
    return np.tile(np.arange(n), len(EDIT_NAMES)), np.repeat(np.asarray(EDIT_NAMES), n)


def real_database(lab: dict[str, np.ndarray], fold: int) -> tuple[list[str], np.ndarray]:
    names = ["originals", "corpus", "queries", f"collages{fold}"]
    return names, np.concatenate([lab[n] for n in names])


def score_fold(
    codes: dict[str, np.ndarray],
    lab: dict[str, np.ndarray],
    fold: int,
    scores: Scores,
    sampled: np.ndarray | None,
    k: int = 256,
) -> None:
    """Add one fold's queries (its evaluation photos) to ``scores``; ``sampled`` codes go in a
    faiss flat index."""
    import faiss

    original, edit = query_layout(lab)
    _, eval_photos = fold_photos(fold)
    q_rows = np.flatnonzero(np.isin(lab["queries"], eval_photos))
    names, db_photo = real_database(lab, fold)
    db = np.concatenate([codes[n] for n in names])
    q = codes["queries"][q_rows]
    dist = hamming_matrix(q, db)
    qp = lab["queries"][q_rows]
    own = dist[np.arange(len(q_rows)), original[q_rows]]
    # Competitors and distractors: everything not made from the query's photo (its other half
    # shows the same scene, e.g. the same lawn, and is not a false match one could score fairly).
    real_ok = db_photo[None, :] != qp[:, None]
    tail = None
    if sampled is not None:
        index = faiss.IndexBinaryFlat(scores.bits)
        index.add(sampled)
        start = time.perf_counter()
        tail, _ = index.search(q, k)
        scores.search_ms.append((time.perf_counter() - start) / len(q) * 1000)
    scores.add(
        own, dist, real_ok, tail, 0 if sampled is None else len(sampled), edit[q_rows], q_rows
    )


# (features, codes, bits): every method at 128 bits, the served one at every size (the CPU budget).
CONFIGS = (
    ("plain", "lsh", 128),
    ("plain", "itq", 128),
    ("trim_grey", "lsh", 128),
    ("trim_grey", "itq", 128),
    ("trim_grey", "ssh", 128),
    ("trim_grey", "itq", 64),
    ("trim_grey", "itq", 256),
)


def deep_scores(
    variant: str, method: str, bits: int, items: int, lab: dict[str, np.ndarray], folds: list[Fold]
) -> Scores:
    scores = Scores(bits)
    for f, fold in enumerate(folds):
        codes = {
            n: fold.projection.encode(variant_features(n, variant), method, bits)
            for n in lab
            if n in ("originals", "corpus", "queries", f"collages{f}")
        }
        sampled = fold.sampled_codes(method, bits, items, seed=f) if items else None
        score_fold(codes, lab, f, scores, sampled)
    return scores


def pixel_scores(method: str, lab: dict[str, np.ndarray]) -> Scores:
    codes = pixel_codes(method)
    scores = Scores(codes["originals"].shape[1] * 8)
    for f in range(FOLDS):
        score_fold(codes, lab, f, scores, None)
    return scores


def has_exact_code(quality: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Whether a query and its original both get an exact-tier code (PDQ quality high enough)."""
    original, _ = query_layout({"originals": quality["originals.quality"]})
    floor = EXACT_TIER.min_quality
    return (quality["queries.quality"][rows] >= floor) & (
        quality["originals.quality"][original[rows]] >= floor
    )


def tail_share(real: np.ndarray, radius: int) -> tuple[int, float]:
    """Unrelated pairs within ``radius``: the count measured, and the share extrapolated from the
    lowest 1e-5 .. 1e-3 of the measured distances (log-linear, as a tail that thins
    geometrically towards distance 0)."""
    real = np.sort(real)
    counted = int(np.searchsorted(real, radius, side="right"))
    lo, hi = max(1, int(len(real) * 1e-5)), max(2, int(len(real) * 1e-3))
    xs = real[lo:hi].astype(np.float64)
    ys = np.log10(np.arange(lo, hi) / len(real))
    slope, intercept = np.polyfit(xs, ys, 1)
    return counted, float(10 ** (slope * radius + intercept))


def two_tier(
    exact: Scores,
    quality: dict[str, np.ndarray],
    deep: Scores,
    fmr: float,
    radius: int,
) -> dict[str, object]:
    """The served answer: PDQ within ``radius`` first, then the deep code within its radius at
    half the false-match budget (the exact tier's share must stay under the other half)."""
    e, d = exact.summary(False), deep.summary(True)
    assert np.array_equal(e["rows"], d["rows"])
    coded = has_exact_code(quality, d["rows"])
    hit = (e["own"] <= radius) & coded
    found = hit | (d["own"] <= deep.radius(fmr / 2))
    # Fused rank, as the service ranks: an exact-tier hit first (no unrelated pair measured comes
    # near the radius); otherwise the deep code's rank.
    rank = np.where(hit, 1, d["rank"])
    everyday = np.isin(d["edit"], list(EDITS))
    counted, share = tail_share(np.concatenate(exact.real), radius)
    return {
        "recall@1": float(np.mean(rank[everyday] == 1)),
        "recall@10": float(np.mean(rank[everyday] <= 10)),
        f"found@{fmr:g}": float(np.mean(found[everyday])),
        "hard recall@1": float(np.mean(rank[~everyday] == 1)),
        "hard found": float(np.mean(found[~everyday])),
        "exact-tier false pairs": f"{counted} of {sum(len(r) for r in exact.real):,}",
        "exact-tier FMR (tail extrapolated)": f"{share:.1e}",
        "per edit recall@1": {x: float(np.mean(rank[d["edit"] == x] == 1)) for x in EDIT_NAMES},
        "per edit found": {x: float(np.mean(found[d["edit"] == x])) for x in EDIT_NAMES},
    }  # fmt: skip


# Content classes of the photos (item 5: semantic neighbours).
CLASSES = {
    "astronaut": "people/animals", "chelsea": "people/animals", "camera": "people/animals",
    "coffee": "objects", "rocket": "objects", "stereo_motorcycle": "objects", "clock": "objects",
    "coins": "objects",
    "brick": "texture", "grass": "texture", "gravel": "texture",
    "page": "document", "text": "document",
    "logo": "graphic", "colorwheel": "graphic",
    "moon": "space", "hubble_deep_field": "space",
    "cell": "microscopy", "immunohistochemistry": "microscopy", "retina": "microscopy",
}  # fmt: skip


def semantic_map(
    distance: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    lab: dict[str, np.ndarray],
    folds_feats: list[tuple[np.ndarray, np.ndarray]],
) -> float:
    """mAP of same-class retrieval: per fold, every image of an evaluation photo queries the others;
    relevant = same content class, another photo; images of the query's own photo are left out."""
    klass = np.asarray([CLASSES[p] for p in PHOTOS])
    aps = []
    for f, (items, photo) in enumerate(folds_feats):
        d = distance(f, items, items).astype(np.float64)
        d += np.random.default_rng(f).random(d.shape) * 1e-3  # ties in random order
        for i in range(len(items)):
            keep = photo != photo[i]
            rel = klass[photo[keep]] == klass[photo[i]]
            if not rel.any():
                continue
            order = rel[np.argsort(d[i, keep], kind="stable")]
            hits = np.cumsum(order)
            aps.append(float(np.mean(hits[order] / (np.flatnonzero(order) + 1))))
    return float(np.mean(aps))


# Every line of the run's output, for its section of docs/benchmarks.md.
_lines: list[str] = []


def as_markdown(lines: list[str]) -> str:
    """The run's output for the docs: tables as tables, every other line in a text block."""
    blocks: list[str] = []
    for line in "\n".join(lines).splitlines():
        if line.startswith("|") or not line.strip():
            blocks.append(line)
            continue
        if blocks and blocks[-1] == "```":
            blocks.insert(len(blocks) - 1, line)
        else:
            blocks += ["```text", line, "```"]
    return "\n".join(blocks)


def emit(text: object = "", flush: bool = True) -> None:
    print(text, flush=flush)
    _lines.append(str(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000, help="sampled distractor codes")
    parser.add_argument(
        "--big",
        type=int,
        default=10_000_000,
        help="distractors for the 128-bit rerun of the best method (0: skip)",
    )
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(2)
    report = Report("hash-copies", "Hash copy detection at scale: real edits, sampled distractors")
    start = time.perf_counter()
    lab = labels()
    extract(("plain", "trim_grey"))
    emit(f"load average {os.getloadavg()[0]:.1f} at start")
    rows: dict[tuple[str, str, int], dict[str, object]] = {}
    folds = {v: [Fold(v, f, lab) for f in range(FOLDS)] for v in {c[0] for c in CONFIGS}}
    kept: dict[tuple[str, str, int], Scores] = {}
    for variant, method, bits in CONFIGS:
        s = deep_scores(variant, method, bits, args.items, lab, folds[variant])
        rows[(variant, method, bits)] = s.summary(True)
        kept[(variant, method, bits)] = s
        r = rows[(variant, method, bits)]
        emit(
            f"{variant} {method} {bits}: r@1 {r['recall@1']:.3f} r@10 "
            f"{r['recall@10']:.3f} found@1e-6 {r['found@1e-6']:.3f} found@1e-7 "
            f"{r['found@1e-7']:.3f} hard r@1 {r['hard recall@1']:.3f} hard found "
            f"{r['hard found@1e-7']:.3f} radius {r['radius@1e-7']} copy "
            f"{r['copy distance median/p95']} distractors "
            f"{r['distractor distance mean/std']} search {r['search ms/query']:.2f} ms",
            flush=True,
        )
    pixel = {m: pixel_scores(m, lab) for m in ("pdq", "pdq_trimmed", "phash")}
    for m, s in pixel.items():
        rows[(m, m, s.bits)] = s.summary(False)
    print_tables(rows)
    best = max(
        (k for k in kept if k[2] == 128), key=lambda k: (rows[k]["found@1e-7"], rows[k]["recall@1"])
    )  # type: ignore[operator]
    quality = pixel_codes("pdq")
    served = EXACT_TIER.max_distance
    emit(
        f"\ntwo-tier, as served (PDQ within {served} of 256 bits first, images of PDQ quality >= "
        f"{EXACT_TIER.min_quality}; then {best[0]} {best[1]} 128 bits within its radius at FMR "
        "5e-8), and other settings; per edit: recall@1:"
    )
    emit("| exact-tier radius | recall@1 | recall@10 "
         "| found @1e-7 | hard recall@1 | hard found "
         "| unrelated real pairs within | exact-tier FMR (tail extrapolated) | "
         + " | ".join(EDIT_NAMES) + " |")  # fmt: skip
    emit("|---:|---:|---:|---:|---:|---:|---|---:|" + "---:|" * len(EDIT_NAMES))
    for radius in sorted({served, 48, 64}):
        t = two_tier(pixel["pdq"], quality, kept[best], 1e-7, radius)
        per_edit: dict[str, float] = t["per edit recall@1"]  # type: ignore[assignment]
        emit(
            f"| {radius}{' (served)' if radius == served else ''} | {t['recall@1']:.3f} | "
            f"{t['recall@10']:.3f} | {t['found@1e-07']:.3f} | {t['hard recall@1']:.3f} | "
            f"{t['hard found']:.3f} | {t['exact-tier false pairs']} | "
            f"{t['exact-tier FMR (tail extrapolated)']} | "
            + " | ".join(f"{per_edit[x]:.3f}" for x in EDIT_NAMES)
            + " |"
        )
    feats = {
        v: [
            (
                np.concatenate(
                    [
                        variant_features("originals", v)[
                            np.isin(lab["originals"], fold_photos(f)[1])
                        ],
                        variant_features("corpus", v)[np.isin(lab["corpus"], fold_photos(f)[1])],
                    ]
                ),
                # fmt: skip
                np.r_[
                    lab["originals"][np.isin(lab["originals"], fold_photos(f)[1])],
                    lab["corpus"][np.isin(lab["corpus"], fold_photos(f)[1])],
                ],
            )
            for f in range(FOLDS)
        ]
        for v in folds
    }
    emit("\nsemantic neighbours, mAP by content class (same class, other photo):")
    from services.hash.projection import l2_normalise

    for v in sorted(folds):
        cos = semantic_map(lambda f, a, b: -(l2_normalise(a) @ l2_normalise(b).T), lab, feats[v])
        line = [f"{v}: float cosine {cos:.3f}"]
        for method in ("lsh", "itq", "ssh"):
            for bits in (64, 128, 256):

                def dist(
                    f: int,
                    a: np.ndarray,
                    b: np.ndarray,
                    m: str = method,
                    n: int = bits,
                    vv: str = v,
                ) -> np.ndarray:
                    p = folds[vv][f].projection
                    return hamming_matrix(p.encode(a, m, n), p.encode(b, m, n))

                line.append(f"{method}-{bits} {semantic_map(dist, lab, feats[v]):.3f}")
        emit(", ".join(line), flush=True)
    if args.big:
        variant, method, bits = best
        t = time.perf_counter()
        s = deep_scores(variant, method, bits, args.big, lab, folds[variant])
        r = s.summary(True)
        emit(
            f"\n{args.big} distractors, {variant} {method} {bits}: r@1 "
            f"{r['recall@1']:.3f} r@10 {r['recall@10']:.3f} found@1e-6 "
            f"{r['found@1e-6']:.3f} found@1e-7 {r['found@1e-7']:.3f} hard r@1 "
            f"{r['hard recall@1']:.3f} radius {r['radius@1e-7']} search "
            f"{r['search ms/query']:.2f} ms/query (exact, batched, 2 threads) "
            f"[{time.perf_counter() - t:.0f}s]"
        )
    emit(f"\ndone in {time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f}")
    report.add(
        f"{len(PHOTOS) * 2} originals (halves of {len(PHOTOS)} photos), their edited copies as "
        f"queries, {args.items:,} sampled distractor codes"
        + (f" ({args.big:,} in the rerun)" if args.big else "")
        + f"; projections trained per fold ({FOLDS} folds, the query's fold never seen). "
        "The run's output:"
    )
    report.add(as_markdown(_lines))
    report.write()


def print_tables(rows: dict[tuple[str, str, int], dict[str, object]]) -> None:
    emit(
        "\n| features | codes | bits | recall@1 | recall@10 | found @1e-6 | found "
        "@1e-7 | radius @1e-7 | copy dist. median / p95 | hard: recall@1 / found "
        "@1e-7 | search ms/query |"
    )
    emit("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for (variant, method, bits), r in rows.items():
        med, p95 = r["copy distance median/p95"]  # type: ignore[misc]
        emit(
            f"| {variant} | {method} | {bits} | {r['recall@1']:.3f} | "
            f"{r['recall@10']:.3f} | {r['found@1e-6']:.3f} | {r['found@1e-7']:.3f} | "
            f"{r['radius@1e-7']} | {med:.2f} / {p95:.2f} | {r['hard recall@1']:.3f} / "
            f"{r['hard found@1e-7']:.3f} | {r['search ms/query']:.2f} |"
        )
    emit("\nper edit, recall@1 / found @1e-7:")
    emit("| features | codes | bits | " + " | ".join(EDIT_NAMES) + " |")
    emit("|---|---|---:|" + "---:|" * len(EDIT_NAMES))
    for (variant, method, bits), r in rows.items():
        if bits == 128 or variant in ("pdq", "phash"):
            pe, pf = r["per edit recall@1"], r["per edit found@1e-7"]
            emit(
                f"| {variant} | {method} | {bits} | "
                + " | ".join(f"{pe[e]:.2f} / {pf[e]:.2f}" for e in EDIT_NAMES)
                + " |"
            )  # type: ignore[index]


if __name__ == "__main__":
    main()
