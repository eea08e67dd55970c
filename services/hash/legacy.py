"""The previous on-disk format (CRC-framed log segments + zip snapshots), read once and converted.

Frame: ``<u32 payload length><u32 crc32(seq + payload)><u64 seq>`` then the payload.
Payload: ``<u8 op><u16 len>collection<u16 len>id<u16 bits><u8 len>method`` then
the packed code (adds only). Segments ``wal-<first seq>.log``; snapshots
``snapshot-<seq>/`` with ``manifest.json`` and one ``.npz`` per collection.

The reader is strict and never modifies a file: a bad frame is accepted only as
the torn end of the last segment (nothing valid after it); anything else -- a bad
frame followed by valid ones, a gap in sequence numbers, a snapshot that cannot
be read and no older one to fall back on -- stops the start, naming the file,
byte offset and sequence number. The converted state is written to the SQLite
store in one transaction, then the old files are moved to ``previous-format/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.hash import db

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQ")
OP_ADD = 1
OP_DELETE = 2
MAX_PAYLOAD = 1 << 20


@dataclass(frozen=True)
class Record:
    op: int
    collection: str
    id: str
    bits: int = 0
    method: str = ""
    code: bytes = b""

    def payload(self) -> bytes:
        coll, item, meth = self.collection.encode(), self.id.encode(), self.method.encode()
        return b"".join([
            struct.pack("<BH", self.op, len(coll)), coll,
            struct.pack("<H", len(item)), item,
            struct.pack("<HB", self.bits, len(meth)), meth,
            self.code,
        ])  # fmt: skip

    @classmethod
    def parse(cls, payload: bytes) -> Record:
        op, n = struct.unpack_from("<BH", payload, 0)
        pos = 3
        coll = payload[pos : pos + n].decode()
        pos += n
        (n,) = struct.unpack_from("<H", payload, pos)
        pos += 2
        item = payload[pos : pos + n].decode()
        pos += n
        bits, n = struct.unpack_from("<HB", payload, pos)
        pos += 3
        method = payload[pos : pos + n].decode()
        return cls(op, coll, item, bits, method, bytes(payload[pos + n :]))


def frame(seq: int, record: Record) -> bytes:
    """One frame in the previous format (kept to write test fixtures)."""
    payload = record.payload()
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return HEADER.pack(len(payload), crc, seq) + payload


def _frame_at(data: bytes, pos: int) -> tuple[int, Record, int] | None:
    """(seq, record, end) of a valid frame starting at ``pos``, else None."""
    if len(data) - pos < HEADER.size:
        return None
    length, crc, seq = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if length > MAX_PAYLOAD or end > len(data):
        return None
    payload = data[pos + HEADER.size : end]
    if zlib.crc32(struct.pack("<Q", seq) + payload) != crc:
        return None
    try:
        return seq, Record.parse(payload), end
    except (struct.error, UnicodeDecodeError):
        return None


def read_segment(path: Path, last: bool) -> list[tuple[int, Record]]:
    data = path.read_bytes()
    records: list[tuple[int, Record]] = []
    pos = 0
    while pos < len(data):
        found = _frame_at(data, pos)
        if found is None:
            expected = records[-1][0] + 1 if records else int(path.stem[4:])
            later = next(
                (p for p in range(pos + 1, len(data) - HEADER.size + 1) if _frame_at(data, p)),
                None,
            )
            if not last or later is not None:
                raise db.CorruptStore(
                    f"{path}: bad record at byte offset {pos} (sequence number {expected})"
                    + (f", valid records follow at byte {later}" if later is not None else "")
                    + f"; {db.REPAIR_HINT.format(dir=path.parent)}"
                )
            log.warning("ignoring a torn final record in %s at byte %d", path, pos)
            break
        seq, record, pos = found
        records.append((seq, record))
    return records


State = dict[str, tuple[int, str, dict[str, bytes]]]


def _load_snapshot(path: Path) -> tuple[int, State]:
    manifest = json.loads((path / "manifest.json").read_text())
    state: State = {}
    for name, info in manifest["collections"].items():
        with np.load(path / info["file"]) as data:
            blob, offsets, codes = data["id_blob"].tobytes(), data["id_offsets"], data["codes"]
        ids = [blob[offsets[i] : offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
        state[name] = (
            int(info["bits"]),
            str(info["method"]),
            {i: codes[n].tobytes() for n, i in enumerate(ids)},
        )
    return int(manifest["seq"]), state


def read_previous_format(directory: Path) -> State | None:
    segments = sorted(
        (int(p.stem[4:]), p) for p in directory.glob("wal-*.log") if p.stem[4:].isdigit()
    )
    snapshots = sorted(directory.glob("snapshot-*"), reverse=True)
    if not segments and not snapshots:
        return None
    log_records = [
        rec for i, (_, p) in enumerate(segments) for rec in read_segment(p, i == len(segments) - 1)
    ]
    for (a, _), (b, rec) in zip(log_records, log_records[1:], strict=False):
        if b != a + 1:
            raise db.CorruptStore(
                f"{directory}: log sequence jumps from {a} to {b} (record {rec.id!r}); "
                + db.REPAIR_HINT.format(dir=directory)
            )
    first_logged = log_records[0][0] if log_records else None
    problems = []
    for snap in [*snapshots, None]:
        state: State
        if snap is None:
            seq, state = 0, {}
        else:
            try:
                seq, state = _load_snapshot(snap)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                problems.append(f"{snap}: {type(exc).__name__}: {exc}")
                continue
        if first_logged is not None and first_logged > seq + 1:
            problems.append(
                f"{snap or 'no snapshot'}: the log starts at sequence {first_logged}, "
                f"records {seq + 1}..{first_logged - 1} are missing"
            )
            continue
        for logged_seq, rec in log_records:
            if logged_seq > seq:
                _apply(state, rec)
        for problem in problems:
            log.error("previous-format snapshot skipped: %s", problem)
        return state
    raise db.CorruptStore(
        f"{directory}: no consistent snapshot + log in the previous format: {'; '.join(problems)}"
    )


def _apply(state: State, rec: Record) -> None:
    if rec.op == OP_DELETE:
        if rec.collection in state:
            state[rec.collection][2].pop(rec.id, None)
        return
    bits, method, items = state.setdefault(rec.collection, (rec.bits, rec.method, {}))
    if (bits, method) == (
        rec.bits,
        rec.method,
    ):  # the old store refused the other kind the same way
        items[rec.id] = rec.code


def migrate_if_present(directory: Path, fsync: bool = True) -> bool:
    """Convert a previous-format directory into the SQLite store; True when one was converted."""
    state = read_previous_format(directory)
    if state is None:
        return False
    path = directory / db.DB_NAME
    if path.exists():
        raise db.CorruptStore(
            f"{directory} holds both {db.DB_NAME} and files of the previous format "
            "(wal-*.log / snapshot-*): move the previous-format files away once you "
            "know which is current"
        )
    staging = directory / f"{db.DB_NAME}.converting"
    for leftover in directory.glob(f"{db.DB_NAME}.converting*"):
        leftover.unlink()
    conn = db.connect(staging, fsync)
    conn.executescript(db.SCHEMA)
    conn.execute("BEGIN")
    label = 0
    for cid, (name, (bits, method, items)) in enumerate(sorted(state.items()), 1):
        conn.execute(
            "INSERT INTO collections (cid, name, bits, method, crc) VALUES (?, ?, ?, ?, ?)",
            (cid, name, bits, method, db.collection_crc(cid, name, bits, method)),
        )
        for item_id, code in items.items():
            conn.execute(
                "INSERT INTO items (label, cid, id, code, crc) VALUES (?, ?, ?, ?, ?)",
                (label, cid, item_id, code, db.item_crc(label, cid, item_id, code)),
            )
            label += 1
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (db.SCHEMA_VERSION,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename
    conn.close()
    os.replace(staging, path)
    _fsync_dir(directory)
    moved = directory / "previous-format"
    moved.mkdir(exist_ok=True)
    for old in [*directory.glob("wal-*.log"), *directory.glob("snapshot-*")]:
        shutil.move(str(old), moved / old.name)
    _fsync_dir(directory)
    log.warning(
        "converted the previous hash store format",
        extra={"fields": {"collections": len(state), "items": label, "kept_in": str(moved)}},
    )
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
