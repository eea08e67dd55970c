"""Hash service building blocks without a server: projection, collections, write-ahead log, store recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from services.hash.collection import Collection
from services.hash.config import IndexConfig, StorageConfig
from services.hash.projection import fit, hamming, pack
from services.hash.store import HashStore
from services.hash.wal import OP_ADD, OP_DELETE, Record, frame, list_segments, read_segment


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


def test_collection_crud_knn_and_radius() -> None:
    coll = Collection("c", 128, "itq", IndexConfig())
    codes = random_codes(50, 16)
    for i, code in enumerate(codes):
        assert coll.put(f"item-{i}", code) is False
    assert coll.put("item-3", codes[4]) is True  # replace keeps one entry
    assert len(coll) == 50
    hits = coll.search(codes[4][None], 2)[0]
    assert {h.id for h in hits} == {"item-3", "item-4"} and all(h.distance == 0 for h in hits)
    near = codes[7].copy()
    near[0] ^= 0b111  # 3 bits away
    assert [(h.id, h.distance) for h in coll.within(near, 3, 100)] == [("item-7", 3)]
    assert coll.within(near, 2, 100) == []
    assert coll.remove("item-7") and not coll.remove("item-7")
    assert coll.get("item-7") is None and coll.within(near, 3, 100) == []
    assert np.array_equal(coll.get("item-3"), codes[4])


def test_collection_switches_to_ivf_and_keeps_answers() -> None:
    coll = Collection("big", 64, "itq", IndexConfig(ivf_threshold=2000, nlist=16, nprobe=16))
    codes = random_codes(3000, 8, seed=2)
    coll.put_many([f"i{i}" for i in range(3000)], codes)
    assert coll.approximate
    # nprobe = nlist: the IVF index visits every cell, so it must agree with brute force.
    for q in range(0, 3000, 300):
        assert coll.search(codes[q][None], 1)[0][0].id == f"i{q}"
    state = coll.export_state()
    copy = Collection("big", 64, "itq", IndexConfig())
    copy.import_state(state)
    assert len(copy) == 3000 and np.array_equal(copy.get("i123"), codes[123])


def test_wal_tolerates_only_a_torn_tail(tmp_path: Path) -> None:
    records = [
        Record(OP_ADD, "c", f"id-{i}", 64, "itq", bytes(range(i, i + 8))) for i in range(5)
    ] + [Record(OP_DELETE, "c", "id-1")]
    data = b"".join(frame(i + 1, r) for i, r in enumerate(records))
    path = tmp_path / "wal-00000000000000000001.log"
    path.write_bytes(data[:-3])  # the delete record is torn
    assert [r for _, r in read_segment(path, tolerate_torn_tail=True)] == records[:5]
    assert path.stat().st_size == len(b"".join(frame(i + 1, r) for i, r in enumerate(records[:5])))
    corrupt = bytearray(data)
    corrupt[20] ^= 0xFF  # inside the first record
    path.write_bytes(bytes(corrupt))
    with pytest.raises(RuntimeError):
        list(read_segment(path, tolerate_torn_tail=False))


async def test_store_recovers_from_log_and_snapshot(tmp_path: Path) -> None:
    storage = StorageConfig(data_dir=str(tmp_path), snapshot_every=7)
    store = HashStore(storage, IndexConfig())
    await store.start()
    codes = random_codes(20, 16, seed=3)
    results = await asyncio.gather(
        *(store.add("photos", f"p{i}", codes[i], 128, "itq") for i in range(20))
    )
    assert not any(results)
    assert await store.delete("photos", "p5") and not await store.delete("photos", "p5")
    assert await store.add("photos", "p6", codes[0], 128, "itq") is True
    await asyncio.sleep(0.2)  # let a background snapshot finish
    # Simulate a crash: no close(), no final snapshot; reopen from disk.
    reopened = HashStore(storage, IndexConfig())
    reopened.recover()
    coll = reopened.collections["photos"]
    assert len(coll) == 19 and coll.get("p5") is None
    assert np.array_equal(coll.get("p6"), codes[0]) and np.array_equal(coll.get("p19"), codes[19])
    assert any(tmp_path.glob("snapshot-*")) and len(list_segments(tmp_path)) <= 3
    await store.close()
