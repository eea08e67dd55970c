"""Features -> binary codes: PCA-ITQ (learned) and random-hyperplane LSH (the baseline).

Both start the same way: L2-normalise the 1280-d pooled features, subtract the
training mean. ITQ then projects onto the top 512 principal components, whitened,
maps them to ``bits`` dimensions with a random orthogonal matrix and rotates
those (Gong & Lazebnik, "Iterative Quantization", 2011) so that taking the sign loses as little as
possible; LSH projects onto random Gaussian
directions. A code bit is 1 where the projection is positive; bits are packed
most significant bit first (``np.packbits``), as HashCode.code documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# PCA directions kept (and whitened) before ITQ; measured best of 128-1024 in bench_hash_copydetect.
WHITEN_DIMS = 512


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def pack(projected: np.ndarray) -> np.ndarray:
    """``N x bits`` real projections -> ``N x bits/8`` uint8 codes."""
    return np.packbits(projected > 0, axis=-1)


def hamming(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distances between one packed code and each row of ``codes``."""
    return np.bitwise_count(np.bitwise_xor(codes, query[None, :])).sum(axis=-1).astype(np.int32)


def train_itq(
    centred: np.ndarray,
    bits: int,
    iterations: int,
    rng: np.random.Generator,
    whiten_dims: int = WHITEN_DIMS,
) -> np.ndarray:
    """``features(dim) -> bits`` matrix: whitened top-``whiten_dims`` PCA, a random orthogonal
    ``whiten_dims -> bits`` map, then the ITQ rotation.

    Why not plain top-``bits`` PCA: the corpus is augmentations of few photos, so its largest
    directions are those photos' own differences and the augmentations' nuisance; a held-out
    photo's identity lies mostly elsewhere, and plain PCA-ITQ lost to random hyperplanes (LSH).
    Whitening the top 512 directions gives each the same weight, and the random orthogonal map
    (PCA-RR, Jegou et al. 2010; the initialisation Gong & Lazebnik compare ITQ against) spreads
    them over all bits before ITQ rotates the result to lose as little as possible to the sign.
    """
    dims = min(whiten_dims, min(centred.shape) - 1)
    if dims < bits:
        raise ValueError(
            f"ITQ with {bits} bits needs at least {bits + 1} training samples and "
            f"dimensions, got {centred.shape}"
        )
    # PCA from the SVD of the centred data (rows = samples); dividing by the singular values
    # whitens.
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    whiten = vt[:dims].T.astype(np.float64) / (singular[:dims] / np.sqrt(centred.shape[0] - 1))
    spread, _ = np.linalg.qr(rng.standard_normal((dims, bits)))
    pca = whiten @ spread
    v = centred @ pca
    # Start from a random orthogonal rotation, then alternate: fix R -> codes B = sign(VR);
    # fix B -> R is the orthogonal Procrustes solution minimising ||B - VR||.
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        b = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        rotation = (u @ wt).T
    return (pca @ rotation).astype(np.float32)


def random_hyperplanes(dim: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((dim, bits)).astype(np.float32)


@dataclass
class Projection:
    """The learned mean plus one ``dim x bits`` matrix per (method, bits)."""

    mean: np.ndarray
    matrices: dict[tuple[str, int], np.ndarray]

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def supports(self, method: str, bits: int) -> bool:
        return (method, bits) in self.matrices

    def encode(self, features: np.ndarray, method: str, bits: int) -> np.ndarray:
        """``N x dim`` pooled features -> ``N x bits/8`` packed codes."""
        matrix = self.matrices[(method, bits)]
        return pack((l2_normalise(features) - self.mean) @ matrix)

    def save(self, path: Path) -> None:
        arrays = {"mean": self.mean}
        arrays.update({f"{method}_{bits}": m for (method, bits), m in self.matrices.items()})
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Projection:
        with np.load(path) as data:
            matrices = {}
            for key in data.files:
                if key == "mean":
                    continue
                method, bits = key.rsplit("_", 1)
                matrices[(method, int(bits))] = data[key].astype(np.float32)
            return cls(data["mean"].astype(np.float32), matrices)


def fit(
    features: np.ndarray, bits_list: tuple[int, ...], seed: int, iterations: int = 50
) -> Projection:
    """Fit ITQ and draw LSH matrices for every size in ``bits_list`` (reproducible for a seed)."""
    normalised = l2_normalise(features.astype(np.float64))
    mean = normalised.mean(axis=0)
    centred = normalised - mean
    matrices: dict[tuple[str, int], np.ndarray] = {}
    for bits in bits_list:
        matrices[("itq", bits)] = train_itq(
            centred, bits, iterations, np.random.default_rng(seed + bits)
        )
        matrices[("lsh", bits)] = random_hyperplanes(
            features.shape[1], bits, np.random.default_rng(seed + 10_000 + bits)
        )
    return Projection(mean.astype(np.float32), matrices)


def train_ssh(
    centred: np.ndarray,
    pairs: np.ndarray,
    groups: np.ndarray,
    bits: int,
    iterations: int,
    rng: np.random.Generator,
    whiten_dims: int = WHITEN_DIMS,
    eta: float = 0.5,
) -> np.ndarray:
    """Semi-supervised hashing (Wang, Kumar & Chang 2012) on the whitened PCA space, then ITQ.

    ``pairs`` (``P x 2`` row indices into ``centred``) are copies of one image; rows of
    different ``groups`` (source photos) are the dissimilar pairs. SSH's adjusted covariance
    ``M = X_l S X_l^T + eta X X^T`` is built in the whitened space, where the unlabelled term
    is ``eta`` times the identity: each principal direction of ``M`` is then weighted by how much
    copy
    pairs agree along it (``sqrt`` of its clipped eigenvalue), so directions that the edits
    scramble lose their say in the code while every direction the copies keep stays; the
    random orthogonal spread and the ITQ rotation follow as in ``train_itq``.
    """
    dims = min(whiten_dims, min(centred.shape) - 1)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    whiten = vt[:dims].T.astype(np.float64) / (singular[:dims] / np.sqrt(centred.shape[0] - 1))
    v = centred @ whiten
    a, b = v[pairs[:, 0]], v[pairs[:, 1]]
    similar = (a.T @ b + b.T @ a) / (2 * len(pairs))
    i, j = rng.integers(0, len(v), (2, 4 * len(pairs)))
    keep = groups[i] != groups[j]
    c, d = v[i[keep]], v[j[keep]]
    dissimilar = (c.T @ d + d.T @ c) / (2 * max(1, int(keep.sum())))
    eigenvalues, eigenvectors = np.linalg.eigh(similar - dissimilar + eta * np.eye(dims))
    weights = np.sqrt(np.clip(eigenvalues, 0.0, None))
    basis = whiten @ (eigenvectors * weights)
    spread, _ = np.linalg.qr(rng.standard_normal((dims, bits)))
    pca = basis @ spread
    projected = centred @ pca
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        signs = np.where(projected @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(signs.T @ projected)
        rotation = (u @ wt).T
    return (pca @ rotation).astype(np.float32)
