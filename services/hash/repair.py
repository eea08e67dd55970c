"""Repair a damaged hash store: keep every record that proves intact, report everything dropped.

    python -m services.hash.repair --data-dir var/hash [--dry-run]

Run it with the service stopped, when the service refused to start and said so.

SQLite store: the newest intact version of every page (the database file,
overlaid with every WAL frame whose own checksum holds, up to the last intact
commit) is scanned page by page -- not through the b-tree, which may be what is
broken -- and every row whose CRC-32 (each row carries one) matches is kept.
Deleted rows cannot come back: the store runs with ``secure_delete``, which
zeroes them on disk. The kept rows go into a fresh database; the damaged files
are moved to ``damaged-<time>/`` (never deleted).

Previous format (``wal-*.log`` + ``snapshot-*``): every intact frame of every
segment is kept (bad byte ranges skipped and reported), on top of the newest
readable snapshot, and the result is converted.

The report (stdout) lists what was kept and, for everything dropped, the file,
byte offset or page, and the ids where they can still be read. Exit status 0:
repaired (or nothing to repair); 1: nothing could be recovered.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.hash import db, legacy


@dataclass
class Report:
    kept_collections: int = 0
    kept_items: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"kept: {self.kept_collections} collections, {self.kept_items} items",
            f"dropped: {len(self.dropped)} problem(s)",
            *(f"  - {d}" for d in self.dropped[:200]),
        ]
        if len(self.dropped) > 200:
            lines.append(f"  ... and {len(self.dropped) - 200} more")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def parse_record(payload: bytes) -> list[object]:
    header_size, pos = varint(payload, 0)
    types = []
    while pos < header_size:
        t, pos = varint(payload, pos)
        types.append(t)
    values: list[object] = []
    body = header_size
    for t in types:
        if t == 0:
            values.append(None)
        elif t in INT_SIZES:
            n = INT_SIZES[t]
            values.append(int.from_bytes(payload[body : body + n], "big", signed=True))
            body += n
        elif t == 7:
            values.append(struct.unpack(">d", payload[body : body + 8])[0])
            body += 8
        elif t in (8, 9):
            values.append(t - 8)
        elif t >= 12:
            n = (t - 12) // 2
            raw = payload[body : body + n]
            values.append(raw if t % 2 == 0 else raw.decode("utf-8"))
            body += n
        else:
            raise ValueError(f"serial type {t}")
        if body > len(payload):
            raise ValueError("record runs past its cell")
    return values


def table_leaf_rows(page: bytes, header_at: int) -> tuple[list[tuple[int, list[object]]], int]:
    """(rowid, values) of every cell of a table leaf page, and how many cells could not be read."""
    if page[header_at] != 0x0D:
        return [], 0
    (cells,) = struct.unpack_from(">H", page, header_at + 3)
    rows, bad = [], 0
    usable_local = len(page) - 35
    for i in range(cells):
        try:
            (ptr,) = struct.unpack_from(">H", page, header_at + 8 + 2 * i)
            size, pos = varint(page, ptr)
            rowid, pos = varint(page, pos)
            if size > usable_local or pos + size > len(page):
                raise ValueError("cell overflows its page")
            rows.append((rowid, parse_record(page[pos : pos + size])))
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            bad += 1
    return rows, bad


def _page_size(db_bytes: bytes, wal: db.Wal | None) -> int:
    if db_bytes[:16] == b"SQLite format 3\x00":
        (raw,) = struct.unpack_from(">H", db_bytes, 16)
        size = 65536 if raw == 1 else raw
        if size >= 512 and size & (size - 1) == 0:
            return size
    if wal is not None and wal.page_size:
        return wal.page_size
    return 4096


def newest_pages(directory: Path, report: Report) -> tuple[bytearray, int]:
    """The database image: the file overlaid with every intact WAL frame up to the last intact
    commit."""
    path = directory / db.DB_NAME
    db_bytes = path.read_bytes() if path.exists() else b""
    wal = db.read_wal(directory / f"{db.DB_NAME}-wal")
    page_size = _page_size(db_bytes, wal)
    image = bytearray(db_bytes)
    if wal is not None and not wal.header_ok:
        report.dropped.append(
            f"{wal.path}: header damaged; its frames cannot be checked and were not used"
        )
    elif wal is not None:
        last_commit = max((f.number for f in wal.frames if f.valid and f.commit_size), default=0)
        size_pages = None
        for frame in wal.frames:
            if frame.number > last_commit:
                break  # an uncommitted (never acknowledged) tail
            if not frame.valid:
                if frame.chained is False and any(
                    f.valid and f.number > frame.number for f in wal.frames
                ):
                    report.dropped.append(
                        f"{wal.path}: frame {frame.number} at byte offset "
                        f"{frame.offset} (page {frame.page}) "
                        "fails its checksum: that version of the page is lost; rows "
                        "written on it in that "
                        "transaction and not rewritten later are missing"
                    )
                continue
            start = (frame.page - 1) * page_size
            if len(image) < start + page_size:
                image.extend(b"\0" * (start + page_size - len(image)))
            image[start : start + page_size] = frame.data
            if frame.commit_size:
                size_pages = frame.commit_size
        if size_pages is not None:
            del image[size_pages * page_size :]
    return image, page_size


def salvage_sqlite(directory: Path, report: Report) -> tuple[dict[int, tuple], list[tuple]]:
    image, page_size = newest_pages(directory, report)
    collections: dict[int, tuple] = {}
    items: dict[int, tuple] = {}
    for number in range(1, len(image) // page_size + 1):
        start = (number - 1) * page_size
        page = bytes(image[start : start + page_size])
        rows, bad = table_leaf_rows(page, 100 if number == 1 else 0)
        if bad:
            report.dropped.append(f"page {number}: {bad} unreadable cell(s)")
        for rowid, values in rows:
            _classify(rowid, values, number, collections, items, report)
    kept_items = []
    for label, (cid, item_id, code) in sorted(items.items()):
        if cid not in collections:
            report.dropped.append(
                f"item label {label} (id {item_id!r}): its collection {cid} is lost"
            )
            continue
        if len(code) * 8 != collections[cid][2]:
            report.dropped.append(f"item label {label} (id {item_id!r}): code of the wrong size")
            continue
        kept_items.append((label, cid, item_id, code))
    return collections, kept_items


def _classify(
    rowid: int,
    values: list[object],
    page: int,
    collections: dict[int, tuple],
    items: dict[int, tuple],
    report: Report,
) -> None:
    if len(values) != 5 or values[0] is not None:
        return  # another table (meta, sqlite_schema)
    _, a, b, c, crc = values
    if isinstance(a, int) and isinstance(b, str) and isinstance(c, bytes):  # items
        if db.item_crc(rowid, a, b, c) != crc:
            report.dropped.append(f"page {page}: item label {rowid} (id {b!r}) fails its checksum")
        elif rowid in items and items[rowid] != (a, b, c):
            report.dropped.append(f"page {page}: item label {rowid} appears twice; kept the first")
        else:
            items[rowid] = (a, b, c)
    elif isinstance(a, str) and isinstance(b, int) and isinstance(c, str):  # collections
        if db.collection_crc(rowid, a, b, c) != crc:
            report.dropped.append(f"page {page}: collection {rowid} ({a!r}) fails its checksum")
        else:
            collections[rowid] = (rowid, a, b, c)


def write_store(path: Path, collections: dict[int, tuple], items: list[tuple]) -> None:
    path.unlink(missing_ok=True)
    conn = db.connect(path)
    conn.executescript(db.SCHEMA)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (db.SCHEMA_VERSION,))
    for cid, name, bits, method in collections.values():
        conn.execute(
            "INSERT INTO collections (cid, name, bits, method, crc) VALUES (?, ?, ?, ?, ?)",
            (cid, name, bits, method, db.collection_crc(cid, name, bits, method)),
        )
    seen: set[tuple[int, str]] = set()
    for label, cid, item_id, code in sorted(items, reverse=True):
        if (cid, item_id) in seen:
            continue  # two labels for one id: the newer (higher) label wins
        seen.add((cid, item_id))
        conn.execute(
            "INSERT INTO items (label, cid, id, code, crc) VALUES (?, ?, ?, ?, ?)",
            (label, cid, item_id, code, db.item_crc(label, cid, item_id, code)),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()


def salvage_previous_format(directory: Path, report: Report) -> legacy.State:
    segments = sorted(
        (int(p.stem[4:]), p) for p in directory.glob("wal-*.log") if p.stem[4:].isdigit()
    )
    records: list[tuple[int, legacy.Record]] = []
    for _, path in segments:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            found = legacy._frame_at(data, pos)
            if found is None:
                nxt = next(
                    (p for p in range(pos + 1, len(data)) if legacy._frame_at(data, p)), len(data)
                )
                report.dropped.append(f"{path}: bytes {pos}..{nxt} are not a valid record")
                pos = nxt
                continue
            seq, record, pos = found
            records.append((seq, record))
    state: legacy.State = {}
    base = 0
    for snap in sorted(directory.glob("snapshot-*"), reverse=True):
        try:
            base, state = legacy._load_snapshot(snap)
            break
        except Exception as exc:  # any unreadable snapshot: try the next older one
            report.dropped.append(f"{snap}: unreadable ({type(exc).__name__}: {exc})")
    logged = sorted(s for s, _ in records if s > base)
    expected = base + 1
    for s in logged:
        if s > expected:
            report.dropped.append(f"log records {expected}..{s - 1} are missing")
        expected = s + 1
    for seq, record in sorted(records, key=lambda r: r[0]):
        if seq > base:
            legacy._apply(state, record)
    return state


def repair(directory: Path, dry_run: bool = False) -> Report:
    report = Report()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    damaged = directory / f"damaged-{stamp}"
    previous = list(directory.glob("wal-*.log")) + list(directory.glob("snapshot-*"))
    fixed = directory / f"{db.DB_NAME}.repaired"
    if previous and not (directory / db.DB_NAME).exists():
        state = salvage_previous_format(directory, report)
        collections = {
            cid: (cid, name, bits, method)
            for cid, (name, (bits, method, _)) in enumerate(sorted(state.items()), 1)
        }
        items, label = [], 0
        for cid, (_, (_, _, codes)) in enumerate(sorted(state.items()), 1):
            for item_id, code in codes.items():
                items.append((label, cid, item_id, code))
                label += 1
        originals = previous
    else:
        collections, items = salvage_sqlite(directory, report)
        originals = [
            p
            for p in (directory / n for n in (db.DB_NAME, f"{db.DB_NAME}-wal", f"{db.DB_NAME}-shm"))
            if p.exists()
        ]
    report.kept_collections = len(collections)
    report.kept_items = len({(cid, i) for _, cid, i, _ in items})
    if dry_run:
        report.notes.append("dry run: nothing was changed")
        return report
    write_store(fixed, collections, items)
    damaged.mkdir()
    for path in originals:
        if path.exists():
            shutil.move(str(path), damaged / path.name)
    os.replace(fixed, directory / db.DB_NAME)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    report.notes.append(f"the damaged files are kept in {damaged}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hash.repair", description=__doc__)
    parser.add_argument("--data-dir", required=True, help="the service's storage.data_dir")
    parser.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    args = parser.parse_args(argv)
    try:
        report = repair(Path(args.data_dir), args.dry_run)
    except (OSError, sqlite3.Error) as exc:
        print(f"repair failed: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    return 0 if report.kept_items or not report.dropped else 1


if __name__ == "__main__":
    sys.exit(main())
