"""The hash store on disk: one SQLite database in WAL mode, ``synchronous=FULL``.

Tables: ``collections`` (name, code size, method) and ``items`` (one row per
item: its int64 faiss label, collection, external id, packed code). Every row
carries a CRC-32 of its own content, checked when the service loads it, because
SQLite checksums its write-ahead log but not the pages of the database: a
flipped bit inside a code would otherwise come back as a different code.

One :class:`Database` object owns the writer connection; ``commit`` runs one
transaction for a whole group of operations (each in its own savepoint, so a
bad one fails alone) and returns only after SQLite has fsynced the WAL. Reads
use a second connection (WAL readers never wait for the writer).

Before SQLite opens the file, :func:`check_wal` walks the WAL's frames itself:
SQLite stops replaying at the first frame whose checksum fails, so a flipped bit
in the middle of the WAL would silently drop every committed transaction after
it. A bad frame with only torn or stale frames after it is a crash mid-write
(never acknowledged); a bad frame followed by an intact commit frame is
corruption and stops the start (``python -m services.hash.repair`` recovers).
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "hash.sqlite3"
SCHEMA_VERSION = "1"
REPAIR_HINT = (
    "run `python -m services.hash.repair --data-dir {dir}` (keeps every valid record, "
    "reports what it drops)"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    cid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bits INTEGER NOT NULL,
    method TEXT NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY,
    cid INTEGER NOT NULL,
    id TEXT NOT NULL,
    code BLOB NOT NULL,
    crc INTEGER NOT NULL,
    UNIQUE (cid, id)
);
"""


class CorruptStore(RuntimeError):
    """The data directory is damaged; the message names the file and where."""


class StoreFull(OSError):
    """The disk (or the database's size limit) is full; the transaction was rolled back."""


def item_crc(label: int, cid: int, item_id: str, code: bytes) -> int:
    return zlib.crc32(struct.pack("<qq", label, cid) + item_id.encode("utf-8") + code)


def collection_crc(cid: int, name: str, bits: int, method: str) -> int:
    return zlib.crc32(
        struct.pack("<qq", cid, bits) + name.encode("utf-8") + b"\0" + method.encode()
    )


# -- SQLite's WAL, read directly (format: https://www.sqlite.org/fileformat2.html#walformat) --

WAL_HEADER = struct.Struct(">IIIIIIII")
FRAME_HEADER = struct.Struct(">IIIIII")


def _wal_checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


@dataclass(frozen=True)
class WalFrame:
    number: int  # 1-based
    offset: int
    page: int
    commit_size: int  # database size in pages after a commit frame, 0 otherwise
    valid: bool  # salts match the header and the checksum holds (seeded from the previous frame)
    chained: bool  # valid within the unbroken checksum chain from the header (what SQLite replays)
    data: bytes


@dataclass(frozen=True)
class Wal:
    path: Path
    page_size: int
    header_ok: bool
    frames: list[WalFrame]


def read_wal(path: Path) -> Wal | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    if len(data) < WAL_HEADER.size:
        return Wal(path, 0, False, [])
    magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = WAL_HEADER.unpack_from(data)
    big_endian = magic == 0x377F0683
    header_ok = magic in (0x377F0682, 0x377F0683) and (c0, c1) == _wal_checksum(
        data[:24], big_endian, 0, 0
    )
    if not header_ok or page_size < 512 or page_size & (page_size - 1):
        return Wal(path, 0, False, [])
    frames = []
    size = FRAME_HEADER.size + page_size
    prev, chain_ok = (c0, c1), True
    for n, offset in enumerate(range(WAL_HEADER.size, len(data) - size + 1, size), 1):
        page, commit, s1, s2, f0, f1 = FRAME_HEADER.unpack_from(data, offset)
        body = data[offset + FRAME_HEADER.size : offset + size]
        computed = _wal_checksum(data[offset : offset + 8] + body, big_endian, *prev)
        valid = (s1, s2) == (salt1, salt2) and computed == (f0, f1)
        chain_ok = chain_ok and valid
        frames.append(WalFrame(n, offset, page, commit, valid, chain_ok, body))
        prev = (f0, f1)
    return Wal(path, page_size, True, frames)


def check_wal(path: Path) -> None:
    """Raise CorruptStore when the WAL holds committed transactions SQLite would skip."""
    wal = read_wal(path)
    if wal is None:
        return
    hint = REPAIR_HINT.format(dir=path.parent)
    if not wal.header_ok:
        raise CorruptStore(
            f"{path}: the write-ahead log header is damaged (byte offset 0); SQLite "
            f"would ignore every transaction in it; {hint}"
        )
    first_bad = next((f for f in wal.frames if not f.chained), None)
    if first_bad is None:
        return
    lost = [f for f in wal.frames if f.number > first_bad.number and f.valid and f.commit_size]
    if lost:
        raise CorruptStore(
            f"{path}: frame {first_bad.number} at byte offset {first_bad.offset} (page "
            f"{first_bad.page}) "
            f"fails its checksum and {len(lost)} committed transaction(s) follow it "
            f"(frames {lost[0].number}..{lost[-1].number}); {hint}"
        )


# -- the database --


@dataclass(frozen=True)
class CollectionRow:
    cid: int
    name: str
    bits: int
    method: str


def connect(path: Path, fsync: bool = True, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so a commit that returned is durable.
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
    # Deleted rows are zeroed on disk, so a repair that scans pages never resurrects one.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_checked(directory: Path, fsync: bool = True) -> sqlite3.Connection:
    """Open (or create) the database, refusing a damaged one with a message naming the file."""
    path = directory / DB_NAME
    hint = REPAIR_HINT.format(dir=directory)
    wal_path = directory / f"{DB_NAME}-wal"
    if not path.exists() and wal_path.exists() and wal_path.stat().st_size > 0:
        raise CorruptStore(f"{path} is missing but its write-ahead log {wal_path} exists; {hint}")
    check_wal(wal_path)
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, fsync)
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise CorruptStore(
                f"{path}: SQLite quick_check failed: {'; '.join(problems[:5])}; {hint}"
            )
        conn.executescript(SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
        )
    except (sqlite3.DatabaseError, CorruptStore) as exc:
        if conn is not None:
            conn.close()  # now, not whenever it is collected: the repair tool moves these files
        if isinstance(exc, CorruptStore):
            raise
        raise CorruptStore(f"{path}: {exc}; {hint}") from exc
    return conn


def load_collections(conn: sqlite3.Connection, directory: Path) -> dict[str, CollectionRow]:
    found = {}
    hint = REPAIR_HINT.format(dir=directory)
    try:
        rows = conn.execute("SELECT cid, name, bits, method, crc FROM collections").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorruptStore(f"{directory / DB_NAME}: table collections: {exc}; {hint}") from exc
    for cid, name, bits, method, crc in rows:
        if collection_crc(cid, name, bits, method) != crc:
            raise CorruptStore(
                f"{directory / DB_NAME}: collection row {cid} ({name!r}) fails its checksum; {hint}"
            )
        found[name] = CollectionRow(cid, name, bits, method)
    return found


def load_items(
    conn: sqlite3.Connection, directory: Path, collection: CollectionRow, batch: int = 65536
) -> Iterator[tuple[list[int], bytes]]:
    """(labels, concatenated codes) of one collection, in label order, every row's CRC checked."""
    hint = REPAIR_HINT.format(dir=directory)
    nbytes = collection.bits // 8
    last = -1
    while True:
        try:
            rows = conn.execute(
                "SELECT label, id, code, crc FROM items WHERE cid = ? AND label > ? "
                "ORDER BY label LIMIT ?",
                (collection.cid, last, batch),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptStore(
                f"{directory / DB_NAME}: reading collection {collection.name!r} after "
                f"label {last}: {exc}; {hint}"
            ) from exc
        if not rows:
            return
        for label, item_id, code, crc in rows:
            if len(code) != nbytes or item_crc(label, collection.cid, item_id, code) != crc:
                raise CorruptStore(
                    f"{directory / DB_NAME}: item label {label} (id {item_id!r}) of collection "
                    f"{collection.name!r} fails its checksum; {hint}"
                )
        last = rows[-1][0]
        yield [r[0] for r in rows], b"".join(r[2] for r in rows)


def is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
