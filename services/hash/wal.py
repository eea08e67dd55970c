"""The write-ahead log: append-only segments of CRC-framed records, fsynced before a reply.

Frame: ``<u32 payload length><u32 crc32(seq + payload)><u64 seq>`` then the payload.
Payload: ``<u8 op><u16 len>collection<u16 len>id<u16 bits><u8 len>method`` then
the packed code (adds only). A segment is named after the first sequence number
it may hold (``wal-00000000000000000042.log``), so a snapshot taken at sequence
``s`` makes every segment that ends at or before ``s`` deletable.

A crash can leave the last frame of the last segment torn (short, or failing
its CRC): recovery keeps everything before it and truncates it away. A bad
frame anywhere else is corruption and stops the service from starting.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct("<IIQ")
OP_ADD = 1
OP_DELETE = 2
MAX_PAYLOAD = 1 << 20


class CorruptLog(RuntimeError):
    pass


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
    payload = record.payload()
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return HEADER.pack(len(payload), crc, seq) + payload


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("wal-*.log"):
        try:
            found.append((int(path.stem[4:]), path))
        except ValueError:
            continue
    return sorted(found)


def read_segment(path: Path, tolerate_torn_tail: bool) -> Iterator[tuple[int, Record]]:
    """Yield ``(seq, record)``; truncate a torn tail when tolerated, raise CorruptLog otherwise."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        good = pos
        torn = len(data) - pos < HEADER.size
        if not torn:
            length, crc, seq = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            payload = data[pos + HEADER.size : end]
            torn = (
                length > MAX_PAYLOAD
                or end > len(data)
                or zlib.crc32(struct.pack("<Q", seq) + payload) != crc
            )
        if torn:
            if not tolerate_torn_tail:
                raise CorruptLog(f"{path}: bad record at byte {good}")
            with path.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
            return
        yield seq, Record.parse(payload)
        pos = end


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends frames to one segment file; ``append`` returns only once they are on disk."""

    def __init__(self, directory: Path, first_seq: int, fsync: bool = True) -> None:
        self.path = directory / segment_name(first_seq)
        self.fsync = fsync
        self._fh = self.path.open("ab")
        if fsync:
            fsync_dir(directory)

    def append(self, frames: list[bytes]) -> None:
        self._fh.write(b"".join(frames))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
