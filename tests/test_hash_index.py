"""Hash service building blocks without a server: projection, collections, store recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from services.hash.collection import Collection
from services.hash.config import IndexConfig, StorageConfig
from services.hash.projection import fit, hamming, pack
from services.hash.store import HashStore


def random_codes(n: int, nbytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def test_pack_is_msb_first_and_hamming_counts_bits() -> None:
    code = pack(np.array([[1.0] + [-1.0] * 63]))[0]
    assert code.tobytes() == b"\x80" + b"\x00" * 7
    other = pack(np.array([[1.0, 1.0, 1.0] + [-1.0] * 61]))
    assert hamming(code, other).tolist() == [2]


def test_itq_fit_is_reproducible_and_balanced() -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((600, 64)) @ rng.standard_normal((64, 1280))
    a, b = fit(features, (64,), seed=5, iterations=20), fit(features, (64,), seed=5, iterations=20)
    assert np.array_equal(a.matrices[("itq", 64)], b.matrices[("itq", 64)])
    bits = np.unpackbits(a.encode(features, "itq", 64), axis=1)
    # Centred PCA directions: every bit splits the training set roughly in half.
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.2)


def test_collection_knn_radius_replace_remove() -> None:
    coll = Collection("c", 1, 128, "itq", IndexConfig())
    codes = random_codes(50, 16)
    coll.add(np.arange(50, dtype=np.int64), codes)
    coll.replace(3, codes[4])
    assert len(coll) == 50
    distances, labels = coll.search(codes[4][None], 2)[0]
    assert set(labels.tolist()) == {3, 4} and distances.tolist() == [0, 0]
    near = codes[7].copy()
    near[0] ^= 0b111  # 3 bits away
    distances, labels = coll.within(near, 3, 100)
    assert labels.tolist() == [7] and distances.tolist() == [3]
    assert coll.within(near, 2, 100)[1].tolist() == []
    coll.remove(7)
    assert len(coll) == 49 and coll.within(near, 3, 100)[1].tolist() == []


def test_collection_switches_to_ivf_and_keeps_answers() -> None:
    coll = Collection("big", 1, 64, "itq", IndexConfig(ivf_threshold=2000, nlist=16, nprobe=16))
    codes = random_codes(3000, 8, seed=2)
    coll.add(np.arange(1000, 4000, dtype=np.int64), codes)
    assert coll.approximate and len(coll) == 3000
    # nprobe = nlist: the IVF index visits every cell, so it must agree with brute force.
    for q in range(0, 3000, 300):
        assert coll.search(codes[q][None], 1)[0][1].tolist() == [1000 + q]
    coll.remove(1000)
    assert len(coll) == 2999


async def test_store_recovers_every_write_after_a_crash(tmp_path: Path) -> None:
    storage = StorageConfig(data_dir=str(tmp_path))
    store = HashStore(storage, IndexConfig())
    await store.start()
    codes = random_codes(20, 16, seed=3)
    results = await asyncio.gather(
        *(store.add("photos", f"p{i}", codes[i], 128, "itq") for i in range(20))
    )
    assert not any(results)
    assert await store.delete("photos", "p5") and not await store.delete("photos", "p5")
    assert await store.add("photos", "p6", codes[0], 128, "itq") is True
    # Simulate a crash: no close(), no checkpoint; reopen from disk.
    reopened = HashStore(storage, IndexConfig())
    reopened.recover()
    coll = reopened.collections["photos"]
    assert len(coll) == 19 and reopened.get("photos", "p5") is None
    assert reopened.get("photos", "p6") == codes[0].tobytes()
    assert reopened.get("photos", "p19") == codes[19].tobytes()
    distances, labels = coll.search(codes[0][None], 2)[0]
    assert set(reopened.ids(labels).values()) == {"p0", "p6"} and distances.tolist() == [0, 0]
    await store.close()
