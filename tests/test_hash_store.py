"""The hash store on disk: every acknowledged write survives, damage is refused and repaired, never
hidden.

Each case fills a store in a child process that exits like a SIGKILL (``os._exit``,
no close, no checkpoint: the committed transactions sit in SQLite's WAL), damages
the files the way the case says, and then checks: the store refuses to start
(naming the file and where) or starts with every acknowledged item; after
``services.hash.repair`` every acknowledged item is present or named in the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput, Overloaded, Unavailable
from services.hash import db, legacy, repair
from services.hash.config import IndexConfig, LimitsConfig, StorageConfig
from services.hash.store import HashStore

ROOT = Path(__file__).resolve().parent.parent

FILL = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import numpy as np
    from services.hash.config import IndexConfig, StorageConfig
    from services.hash.store import HashStore

    async def main(directory, waves, per_wave, first):
        store = HashStore(StorageConfig(data_dir=directory), IndexConfig())
        await store.start()
        acked = []
        for w in range(waves):  # one group commit (one WAL transaction) per wave
            ids = range(first + w * per_wave, first + (w + 1) * per_wave)
            await asyncio.gather(*(store.add("c", f"item-{i}", code(i), 128, "itq") for i in ids))
            acked.extend(ids)
        print(json.dumps(acked), flush=True)
        os._exit(0)  # as SIGKILL: no close, no checkpoint

    def code(i):
        return np.random.default_rng(i).integers(0, 256, 16, dtype=np.uint8)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    """
)


def code_for(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, 16, dtype=np.uint8).tobytes()


def fill(directory: Path, waves: int = 12, per_wave: int = 25, first: int = 0) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", FILL, str(directory), str(waves), str(per_wave), str(first)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def open_store(directory: Path) -> HashStore:
    store = HashStore(StorageConfig(data_dir=str(directory)), IndexConfig())
    store.recover()
    return store


def missing(store: HashStore, acked: list[int]) -> list[int]:
    return [i for i in acked if store.get("c", f"item-{i}") != code_for(i)]


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def wal_path(directory: Path) -> Path:
    return directory / f"{db.DB_NAME}-wal"


def checkpoint(directory: Path) -> None:
    """Fold the WAL into the database file (as a clean shutdown does)."""
    conn = db.connect(directory / db.DB_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# -- the WAL --


@pytest.mark.parametrize("where", ["middle", "first frame"])
def test_bit_flip_in_the_wal_is_refused_then_repaired(tmp_path: Path, where: str) -> None:
    acked = fill(tmp_path)
    wal = db.read_wal(wal_path(tmp_path))
    assert wal is not None and sum(1 for f in wal.frames if f.commit_size) >= 10
    victim = wal.frames[len(wal.frames) // 2] if where == "middle" else wal.frames[0]
    flip(wal_path(tmp_path), victim.offset + 24 + 1000)
    # Today's SQLite alone would start on the frames before the flip and drop the rest silently.
    with pytest.raises(db.CorruptStore) as refused:
        open_store(tmp_path)
    message = str(refused.value)
    assert str(wal_path(tmp_path)) in message
    assert f"frame {victim.number} at byte offset {victim.offset}" in message
    assert "services.hash.repair" in message

    report = repair.repair(tmp_path)
    store = open_store(tmp_path)
    lost = missing(store, acked)
    # Whatever is not back is covered by the report's line about the lost page version.
    assert not lost or any(f"frame {victim.number}" in d for d in report.dropped), (lost, report)
    assert len(lost) <= 40, report.render()  # one page of rows at most
    assert list(tmp_path.glob("damaged-*/" + db.DB_NAME + "-wal"))


def test_torn_final_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    acked = fill(tmp_path)
    wal = db.read_wal(wal_path(tmp_path))
    assert wal is not None
    last = wal.frames[-1]
    raw = wal_path(tmp_path).read_bytes()
    frame_bytes = raw[last.offset : last.offset + 24 + wal.page_size]
    # A transaction that was being written when the process died: a whole frame whose
    # checksum fails (never committed, so never acknowledged), then half a frame.
    torn = bytearray(frame_bytes)
    torn[4:8] = (1).to_bytes(4, "big")  # claims to be a commit frame
    torn[100] ^= 0xFF
    with wal_path(tmp_path).open("ab") as fh:
        fh.write(bytes(torn) + frame_bytes[: len(frame_bytes) // 2])
    store = open_store(tmp_path)
    assert missing(store, acked) == []
    assert len(store.collections["c"]) == len(acked)


def test_damaged_wal_header_is_refused(tmp_path: Path) -> None:
    fill(tmp_path)
    flip(wal_path(tmp_path), 20)  # the salt: SQLite would ignore the whole WAL
    with pytest.raises(db.CorruptStore, match="header is damaged"):
        open_store(tmp_path)
    report = repair.repair(tmp_path)
    assert any("header damaged" in d for d in report.dropped)


# -- the database file --


def test_bit_flip_inside_a_stored_code_is_found_by_the_row_checksum(tmp_path: Path) -> None:
    acked = fill(tmp_path)
    checkpoint(tmp_path)
    path = tmp_path / db.DB_NAME
    victim = acked[len(acked) // 2]
    offset = path.read_bytes().index(code_for(victim))
    flip(path, offset + 3)
    # SQLite's own quick_check cannot see this: the page structure is intact.
    with pytest.raises(db.CorruptStore, match=f"id 'item-{victim}'.*fails its checksum"):
        open_store(tmp_path)
    report = repair.repair(tmp_path)
    assert any(f"'item-{victim}'" in d for d in report.dropped), report.render()
    store = open_store(tmp_path)
    assert missing(store, acked) == [victim]


def test_damaged_page_structure_is_refused_and_repair_reports_it(tmp_path: Path) -> None:
    acked = fill(tmp_path)
    checkpoint(tmp_path)
    path = tmp_path / db.DB_NAME
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    victim = acked[len(acked) // 3]
    page = data.index(code_for(victim)) // page_size
    flip(path, page * page_size + 3, 0x7F)  # the leaf page's cell count
    with pytest.raises(db.CorruptStore, match=str(path)):
        open_store(tmp_path)
    report = repair.repair(tmp_path)
    store = open_store(tmp_path)
    lost = missing(store, acked)
    assert not lost or any(f"page {page + 1}" in d for d in report.dropped), report.render()


def test_damaged_sqlite_header_is_refused_and_repair_keeps_everything(tmp_path: Path) -> None:
    acked = fill(tmp_path)
    checkpoint(tmp_path)
    path = tmp_path / db.DB_NAME
    with path.open("r+b") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(db.CorruptStore, match=str(path)):
        open_store(tmp_path)
    repair.repair(tmp_path)
    assert missing(open_store(tmp_path), acked) == []


def test_missing_database_with_its_wal_is_refused(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / db.DB_NAME).unlink()
    with pytest.raises(db.CorruptStore, match="is missing"):
        open_store(tmp_path)


def test_healthy_store_survives_reopen_and_repair_changes_nothing(tmp_path: Path) -> None:
    acked = fill(tmp_path)
    acked += fill(tmp_path, waves=3, first=10_000)  # a second run appends to the same WAL
    assert missing(open_store(tmp_path), acked) == []
    report = repair.repair(tmp_path, dry_run=True)
    assert report.dropped == [] and report.kept_items == len(acked)


# -- the previous on-disk format --


def write_previous_format(directory: Path, n: int, snapshot_at: int | None) -> list[bytes]:
    """A directory as the previous store left it: optional snapshot at ``snapshot_at`` + one
    segment."""
    directory.mkdir(parents=True, exist_ok=True)
    records = [
        legacy.Record(legacy.OP_ADD, "c", f"item-{i}", 128, "itq", code_for(i)) for i in range(n)
    ]
    start = 0
    if snapshot_at is not None:
        snap = directory / f"snapshot-{snapshot_at:020d}"
        snap.mkdir()
        ids = [f"item-{i}".encode() for i in range(snapshot_at)]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        np.savez(
            snap / "collection-0.npz",
            id_blob=np.frombuffer(b"".join(ids), np.uint8),
            id_offsets=offsets,
            codes=np.stack([np.frombuffer(code_for(i), np.uint8) for i in range(snapshot_at)]),
        )
        (snap / "manifest.json").write_text(
            json.dumps(
                {
                    "seq": snapshot_at,
                    "collections": {
                        "c": {"bits": 128, "method": "itq", "file": "collection-0.npz"}
                    },
                }
            )
        )
        start = snapshot_at
    frames = [legacy.frame(i + 1, r) for i, r in enumerate(records)][start:]
    (directory / f"wal-{start + 1:020d}.log").write_bytes(b"".join(frames))
    return frames


def test_previous_format_is_converted_once(tmp_path: Path) -> None:
    write_previous_format(tmp_path, 300, snapshot_at=120)
    store = open_store(tmp_path)
    assert missing(store, list(range(300))) == []
    assert (tmp_path / "previous-format").is_dir() and not list(tmp_path.glob("wal-*.log"))
    assert missing(open_store(tmp_path), list(range(300))) == []  # the second start reads SQLite


def test_previous_format_bit_flip_mid_log_is_refused_not_truncated(tmp_path: Path) -> None:
    frames = write_previous_format(tmp_path, 200, snapshot_at=None)
    segment = next(tmp_path.glob("wal-*.log"))
    size = segment.stat().st_size
    offset = sum(len(f) for f in frames[:100])
    flip(segment, offset + 20)
    # The old reader truncated the file here and started with ids 101-199 gone.
    with pytest.raises(db.CorruptStore, match=rf"byte offset {offset} \(sequence number 101\)"):
        open_store(tmp_path)
    assert segment.stat().st_size == size
    report = repair.repair(tmp_path)
    assert any(f"bytes {offset}.." in d for d in report.dropped), report.render()
    assert missing(open_store(tmp_path), list(range(200))) == [100]


def test_previous_format_torn_final_record_is_ignored(tmp_path: Path) -> None:
    write_previous_format(tmp_path, 50, snapshot_at=None)
    segment = next(tmp_path.glob("wal-*.log"))
    with segment.open("ab") as fh:
        fh.write(
            legacy.frame(51, legacy.Record(legacy.OP_ADD, "c", "torn", 128, "itq", b"x" * 16))[:-5]
        )
    assert missing(open_store(tmp_path), list(range(50))) == []


@pytest.mark.parametrize("damage", ["missing manifest", "corrupt manifest", "corrupt snapshot"])
def test_previous_format_bad_snapshot_without_fallback_is_refused(
    tmp_path: Path, damage: str
) -> None:
    write_previous_format(tmp_path, 300, snapshot_at=200)
    snap = next(tmp_path.glob("snapshot-*"))
    if damage == "missing manifest":
        (snap / "manifest.json").unlink()  # the old store started empty here
    elif damage == "corrupt manifest":
        (snap / "manifest.json").write_text('{"seq": 2')
    else:
        (snap / "collection-0.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(db.CorruptStore, match=str(snap)):
        open_store(tmp_path)


def test_previous_format_bad_snapshot_falls_back_to_the_full_log(tmp_path: Path) -> None:
    write_previous_format(tmp_path, 300, snapshot_at=None)
    bad = tmp_path / f"snapshot-{150:020d}"
    bad.mkdir()
    (bad / "manifest.json").write_text("not json")
    assert missing(open_store(tmp_path), list(range(300))) == []


# -- the committer: one bad record fails alone; a dead committer says so --


async def test_bad_records_fail_alone_and_the_committer_keeps_going(tmp_path: Path) -> None:
    store = HashStore(StorageConfig(data_dir=str(tmp_path)), IndexConfig())
    await store.start()
    good = np.frombuffer(code_for(1), np.uint8)
    bad_calls = [
        store.add("c", "m", good, 128, "m" * 256),  # the record that killed the old committer
        store.add("c", "short", good[:8], 128, "itq"),
        store.add("pbf\n", "x", good, 128, "itq"),
        store.add("c", "x" * 600, good, 128, "itq"),
        store.add("c", "", good, 128, "itq"),
    ]
    results = await asyncio.gather(
        store.add("c", "first", good, 128, "itq"),
        *bad_calls,
        store.add("c", "last", good, 128, "itq"),
        return_exceptions=True,
    )
    assert results[0] is False and results[-1] is False
    assert all(isinstance(r, InvalidInput) for r in results[1:-1]), results
    assert await store.add("c", "later", good, 128, "itq") is False
    assert len(store.collections["c"]) == 3 and "pbf\n" not in store.collections
    await store.close()


async def test_a_failed_committer_refuses_writes_and_reports_once(tmp_path: Path) -> None:
    store = HashStore(StorageConfig(data_dir=str(tmp_path)), IndexConfig())
    reasons: list[str] = []
    store.on_failure = reasons.append
    await store.start()
    code = np.frombuffer(code_for(1), np.uint8)
    await store.add("c", "a", code, 128, "itq")
    assert store._writer is not None
    store._writer.conn.close()  # an I/O failure the store cannot reason about
    with pytest.raises(Unavailable):
        await store.add("c", "b", code, 128, "itq")
    with pytest.raises(Unavailable):
        await store.add("c", "c", code, 128, "itq")
    assert len(reasons) == 1 and store.failure
    store._writer = None
    await store.close()
    assert missing(open_store(tmp_path), []) == [] and open_store(tmp_path).get("c", "a")


async def test_limits(tmp_path: Path) -> None:
    store = HashStore(
        StorageConfig(data_dir=str(tmp_path)),
        IndexConfig(),
        LimitsConfig(max_collections=2, max_items_per_collection=3, max_id_bytes=8),
    )
    await store.start()
    code = np.frombuffer(code_for(1), np.uint8)
    for i in range(3):
        await store.add("a", f"i{i}", code, 128, "itq")
    with pytest.raises(Overloaded, match="max_items_per_collection"):
        await store.add("a", "i3", code, 128, "itq")
    assert await store.add("a", "i1", code, 128, "itq") is True  # a replacement is not a new item
    await store.add("b", "i0", code, 128, "itq")
    with pytest.raises(Overloaded, match="max_collections"):
        await store.add("c", "i0", code, 128, "itq")
    with pytest.raises(InvalidInput, match="8 bytes"):
        await store.add("b", "123456789", code, 128, "itq")
    assert await store.delete("a", "i0")
    await store.add("a", "i3", code, 128, "itq")  # room again
    await store.close()
    assert len(open_store(tmp_path).collections["a"]) == 3


# -- a full disk --


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a small tmpfs: mounting one needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_fails_the_write_and_loses_no_acknowledged_one(small_disk: Path) -> None:
    directory = small_disk / "hash"
    store = HashStore(StorageConfig(data_dir=str(directory)), IndexConfig())
    await store.start()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_200_000)
    acked, refused = [], 0
    for wave in range(400):
        ids = range(wave * 20, wave * 20 + 20)
        results = await asyncio.gather(
            *(
                store.add("c", f"item-{i}", np.frombuffer(code_for(i), np.uint8), 128, "itq")
                for i in ids
            ),
            return_exceptions=True,
        )
        for i, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                assert isinstance(result, Unavailable) and "full" in str(result), result
                refused += 1
            else:
                acked.append(i)
        if refused:
            break
    assert refused and acked, "the disk never filled up"
    filler.unlink()  # space again: the store goes on without a restart
    assert await store.add("c", "after", np.frombuffer(code_for(1), np.uint8), 128, "itq") is False
    acked.append(-1)
    await store.close()
    reopened = open_store(directory)
    assert [i for i in acked if i >= 0 and reopened.get("c", f"item-{i}") != code_for(i)] == []


async def test_close_finishes_the_writes_it_holds(tmp_path: Path) -> None:
    store = HashStore(StorageConfig(data_dir=str(tmp_path)), IndexConfig())
    await store.start()
    tasks = [
        asyncio.create_task(
            store.add("c", f"item-{i}", np.frombuffer(code_for(i), np.uint8), 128, "itq")
        )
        for i in range(200)
    ]
    await asyncio.sleep(0)  # every Add is queued, the first group commit may be running
    await store.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    acked = [i for i, r in enumerate(results) if r is False]
    assert all(r is False or isinstance(r, Unavailable) for r in results), results
    assert len(acked) == 200 and missing(open_store(tmp_path), acked) == []
