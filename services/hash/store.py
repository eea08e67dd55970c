"""Durable named collections: every acknowledged Add/Delete is in the fsynced log first.

Writes go through one committer task (group commit): it takes every pending
operation, appends their frames to the log, fsyncs once, then applies them in
log order and answers each caller. Reads go straight to the in-memory
collections. Every ``snapshot_every`` operations (and on clean shutdown) the
committer starts a new log segment and writes a snapshot of the state up to the
last sequence number; older segments and snapshots are then deleted.

Recovery on start: load the newest complete snapshot, replay every logged
record after it, truncate a torn tail record, start a fresh segment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import InvalidInput, Unavailable
from services.hash.collection import Collection
from services.hash.config import IndexConfig, StorageConfig
from services.hash.wal import (
    OP_ADD,
    OP_DELETE,
    Record,
    SegmentWriter,
    frame,
    fsync_dir,
    list_segments,
    read_segment,
)

log = logging.getLogger(__name__)


class HashStore:
    def __init__(self, storage: StorageConfig, index: IndexConfig) -> None:
        self.storage = storage
        self.index_config = index
        self.directory = Path(storage.data_dir)
        self.collections: dict[str, Collection] = {}
        self.seq = 0
        self._writer: SegmentWriter | None = None
        self._pending: list[tuple[Record, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._snapshotting: asyncio.Task[None] | None = None
        self._since_snapshot = 0
        self._failed = ""

    # -- lifecycle --

    def recover(self) -> None:
        """Load the newest snapshot and replay the log after it (synchronous, before serving)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot_seq = self._load_snapshot()
        self.seq = snapshot_seq
        segments = list_segments(self.directory)
        replayed = 0
        for i, (_, path) in enumerate(segments):
            for seq, record in read_segment(path, tolerate_torn_tail=i == len(segments) - 1):
                if seq > snapshot_seq:
                    self._apply(record)
                    self.seq = seq
                    replayed += 1
        self._writer = SegmentWriter(self.directory, self.seq + 1, self.storage.fsync)
        items = sum(len(c) for c in self.collections.values())
        log.info(
            "hash store recovered",
            extra={
                "fields": {
                    "snapshot_seq": snapshot_seq,
                    "replayed": replayed,
                    "items": items,
                    "collections": len(self.collections),
                }
            },
        )

    async def start(self) -> None:
        if self._writer is None:
            await asyncio.to_thread(self.recover)
        self._committer = asyncio.create_task(self._commit_loop(), name="hash-wal-committer")

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._snapshotting is not None:
            await self._snapshotting
        if self._since_snapshot and not self._failed:
            await self._snapshot()
        if self._writer is not None:
            self._writer.close()

    # -- writes --

    async def add(
        self, collection: str, item_id: str, code: np.ndarray, bits: int, method: str
    ) -> bool:
        """Log, fsync, apply; True when an item was replaced."""
        replaced: bool = await self._submit(
            Record(OP_ADD, collection, item_id, bits, method, code.tobytes())
        )
        return replaced

    async def delete(self, collection: str, item_id: str) -> bool:
        if collection not in self.collections or self.collections[collection].get(item_id) is None:
            return False  # nothing to log
        deleted: bool = await self._submit(Record(OP_DELETE, collection, item_id))
        return deleted

    async def _submit(self, record: Record) -> Any:
        if self._failed:
            raise Unavailable(self._failed)
        if self._committer is None or self._committer.done():
            raise Unavailable("hash store is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wake.set()
        return await future

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            frames = [frame(self.seq + 1 + i, record) for i, (record, _) in enumerate(batch)]
            try:
                assert self._writer is not None
                await asyncio.to_thread(self._writer.append, frames)
            except OSError as exc:
                # Fail-stop (as databases do on a failed fsync): the log may hold part of this
                # batch, so memory and log could disagree -- refuse writes until a restart recovers.
                log.exception("write-ahead log append failed; refusing further writes")
                self._failed = (
                    f"write-ahead log append failed: {exc}; restart the service to recover"
                )
                for _, future in batch + self._pending:
                    if not future.done():
                        future.set_exception(Unavailable(self._failed))
                self._pending = []
                return
            for record, future in batch:
                self.seq += 1
                try:
                    result = self._apply(record)
                except InvalidInput as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(result)
            self._since_snapshot += len(batch)
            if self._since_snapshot >= self.storage.snapshot_every and (
                self._snapshotting is None or self._snapshotting.done()
            ):
                # Rotate and capture here, between batches, so no append is in flight.
                captured = self._rotate_and_capture()
                self._snapshotting = asyncio.create_task(
                    asyncio.to_thread(self._write_snapshot, *captured)
                )

    def _apply(self, record: Record) -> bool:
        """Apply one logged operation; deterministic, so replay reaches the same state."""
        if record.op == OP_DELETE:
            coll = self.collections.get(record.collection)
            return coll.remove(record.id) if coll is not None else False
        coll = self.collections.get(record.collection)
        if coll is None:
            coll = self.collections[record.collection] = Collection(
                record.collection, record.bits, record.method, self.index_config
            )
        elif coll.bits != record.bits or coll.method != record.method:
            # Two first adds raced with different code kinds: the later one loses, in the log as in memory.
            raise InvalidInput(
                f"collection {record.collection!r} holds {coll.bits}-bit {coll.method} codes, not {record.bits}-bit {record.method}"
            )
        return coll.put(record.id, np.frombuffer(record.code, np.uint8))

    # -- snapshots --

    async def _snapshot(self) -> None:
        await asyncio.to_thread(self._write_snapshot, *self._rotate_and_capture())

    def _rotate_and_capture(self) -> tuple[int, dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        """Start a new log segment and copy the state at ``self.seq`` (the snapshot is written later)."""
        assert self._writer is not None
        seq = self.seq
        old_writer = self._writer
        self._writer = SegmentWriter(self.directory, seq + 1, self.storage.fsync)
        old_writer.close()
        meta = {name: {"bits": c.bits, "method": c.method} for name, c in self.collections.items()}
        states = {name: c.export_state() for name, c in self.collections.items()}
        self._since_snapshot = 0
        return seq, meta, states

    def _write_snapshot(
        self, seq: int, meta: dict[str, Any], states: dict[str, dict[str, np.ndarray]]
    ) -> None:
        final = self.directory / f"snapshot-{seq:020d}"
        staging = self.directory / f".snapshot-{seq:020d}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        files = {}
        for i, (name, state) in enumerate(states.items()):
            path = staging / f"collection-{i}.npz"
            with path.open("wb") as fh:
                np.savez(fh, **state)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            files[name] = {**meta[name], "file": path.name}
        manifest = staging / "manifest.json"
        with manifest.open("w") as fh:
            json.dump({"seq": seq, "collections": files}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(staging)
        staging.rename(final)
        fsync_dir(self.directory)
        self._prune(seq)
        log.info("hash snapshot written", extra={"fields": {"seq": seq, "collections": len(files)}})

    def _prune(self, snapshot_seq: int) -> None:
        for path in self.directory.glob("snapshot-*"):
            if int(path.name[9:]) < snapshot_seq:
                shutil.rmtree(path, ignore_errors=True)
        segments = list_segments(self.directory)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            if next_first - 1 <= snapshot_seq:
                path.unlink(missing_ok=True)

    def _load_snapshot(self) -> int:
        snapshots = sorted(
            p for p in self.directory.glob("snapshot-*") if (p / "manifest.json").is_file()
        )
        if not snapshots:
            return 0
        latest = snapshots[-1]
        manifest = json.loads((latest / "manifest.json").read_text())
        for name, info in manifest["collections"].items():
            coll = Collection(name, int(info["bits"]), str(info["method"]), self.index_config)
            with np.load(latest / info["file"]) as data:
                coll.import_state({k: data[k] for k in data.files})
            self.collections[name] = coll
        return int(manifest["seq"])
