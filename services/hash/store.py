"""Durable named collections: SQLite on disk (``services/hash/db.py``), faiss in memory.

Writes go through one committer task (group commit): it takes every pending
Add/Delete (up to ``storage.max_batch``), runs them as one SQLite transaction
in a worker thread -- each in its own savepoint, so a record that fails (a
limit, a mismatched code size, a bug) fails only its own request -- and the
commit returns after SQLite has fsynced its WAL (``synchronous=FULL``). Only
then are the operations applied to the in-memory faiss indexes and the callers
answered: an acknowledged write is on disk.

If the committer cannot go on (an I/O error other than a full disk, or a bug
outside a single record) the store fails stop: every write answers
UNAVAILABLE and ``on_failure`` turns the service's health NOT_SERVING; a
restart rebuilds memory from disk. A full disk fails that transaction only
(nothing of it is applied or acknowledged) and later writes are tried again.

Start: verify the database (WAL frames, ``PRAGMA quick_check``, every row's
CRC), then rebuild each collection's faiss index from its rows. A data
directory in the previous format (``wal-*.log`` + ``snapshot-*``) is read once
and converted (``services/hash/legacy.py``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from services.common.errors import InvalidInput, Overloaded, ServiceError, Unavailable
from services.hash import db, legacy, validation
from services.hash.collection import Collection
from services.hash.committer import HEALTHY, CommittedWrites, GroupCommitter
from services.hash.config import IndexConfig, LimitsConfig, StorageConfig

log = logging.getLogger(__name__)

COMMIT_SECONDS = Histogram(
    "visionmesh_hash_commit_seconds",
    "Time of one group commit (SQLite transaction + fsync)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
COMMIT_OPS = Histogram(
    "visionmesh_hash_commit_operations",
    "Operations per group commit",
    buckets=(1, 2, 4, 8, 16, 64, 256, 1024, 4096),
)
REJECTED = Counter("visionmesh_hash_rejected_total", "Hash writes refused, by reason", ["reason"])
COLLECTIONS = Gauge(
    "visionmesh_hash_collections", "Collections held (their exact-copy tiers not counted)"
)
ITEMS = Gauge(
    "visionmesh_hash_items", "Items held, all collections and their exact-copy tiers together"
)


@dataclass(frozen=True)
class Operation:
    kind: str  # "add" or "delete"
    collection: str
    id: str
    bits: int = 0
    method: str = ""
    code: bytes = b""


@dataclass(frozen=True)
class Committed:
    collection: db.CollectionRow
    label: int  # -1: a delete of an id that was not there
    replaced: bool = False


class Writer:
    """The writer connection and the catalog it keeps in step with the committed data.

    Used by one thread at a time (the committer's), never by the event loop.
    """

    def __init__(self, conn: sqlite3.Connection, limits: LimitsConfig) -> None:
        self.conn = conn
        self.limits = limits
        self.catalog: dict[str, db.CollectionRow] = {}
        self.counts: dict[int, int] = {}
        self.next_label = 0
        self.next_cid = 1

    def load(self, directory: Path) -> None:
        self.catalog = db.load_collections(self.conn, directory)
        self.counts = dict(
            self.conn.execute("SELECT cid, COUNT(*) FROM items GROUP BY cid").fetchall()
        )
        for row in self.catalog.values():
            self.counts.setdefault(row.cid, 0)
        (top,) = self.conn.execute("SELECT COALESCE(MAX(label), -1) FROM items").fetchone()
        self.next_label = int(top) + 1
        self.next_cid = max((r.cid for r in self.catalog.values()), default=0) + 1

    def commit(self, ops: list[Operation]) -> list[Committed | ServiceError]:
        """One transaction for all of ``ops``; returns after the fsync, one outcome per op."""
        saved = (dict(self.catalog), dict(self.counts), self.next_label, self.next_cid)
        outcomes: list[Committed | ServiceError] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                self.conn.execute("SAVEPOINT op")
                try:
                    outcomes.append(self._one(op))
                    self.conn.execute("RELEASE op")
                except ServiceError as exc:
                    self.conn.execute("ROLLBACK TO op")
                    self.conn.execute("RELEASE op")
                    outcomes.append(exc)
                except sqlite3.Error as exc:
                    if db.is_full(exc) or not isinstance(exc, sqlite3.IntegrityError):
                        raise
                    # A record the checks above should have refused: fail it alone, loudly.
                    log.error("hash record refused by the database: %s (%r)", exc, op)
                    self.conn.execute("ROLLBACK TO op")
                    self.conn.execute("RELEASE op")
                    outcomes.append(ServiceError(f"record refused by the store: {exc}"))
            self.conn.execute("COMMIT")
        except BaseException as exc:
            self.catalog, self.counts, self.next_label, self.next_cid = saved
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback after a failed commit failed")
            if isinstance(exc, sqlite3.Error) and db.is_full(exc):
                raise db.StoreFull(f"the disk holding the hash store is full: {exc}") from exc
            raise
        return outcomes

    def _one(self, op: Operation) -> Committed:
        validation.stored_collection_name(op.collection)
        validation.item_id(op.id, self.limits.max_id_bytes)
        if op.kind == "delete":
            row = self.catalog.get(op.collection)
            if row is None:
                return Committed(db.CollectionRow(-1, op.collection, 0, ""), -1)
            found = self.conn.execute(
                "SELECT label FROM items WHERE cid = ? AND id = ?", (row.cid, op.id)
            ).fetchone()
            if found is None:
                return Committed(row, -1)
            self.conn.execute("DELETE FROM items WHERE label = ?", (found[0],))
            self.counts[row.cid] -= 1
            return Committed(row, int(found[0]))
        if op.kind != "add":
            raise InvalidInput(f"unknown operation {op.kind!r}")
        validation.method(op.method)
        validation.code_bytes(op.code, op.bits)
        row = self.catalog.get(op.collection)
        new_collection = row is None
        if row is None:
            validation.collection_limit(self.catalog, op.collection, self.limits.max_collections)
            row = db.CollectionRow(self.next_cid, op.collection, op.bits, op.method)
            self.conn.execute(
                "INSERT INTO collections (cid, name, bits, method, crc) VALUES (?, ?, ?, ?, ?)",
                (row.cid, row.name, row.bits, row.method, db.collection_crc(*_fields(row))),
            )
        elif row.bits != op.bits or row.method != op.method:
            raise InvalidInput(
                f"collection {op.collection!r} holds {row.bits}-bit {row.method} "
                f"codes, not {op.bits}-bit {op.method}"
            )
        found = self.conn.execute(
            "SELECT label FROM items WHERE cid = ? AND id = ?", (row.cid, op.id)
        ).fetchone()
        if found is not None:
            label = int(found[0])
            self.conn.execute(
                "UPDATE items SET code = ?, crc = ? WHERE label = ?",
                (op.code, db.item_crc(label, row.cid, op.id, op.code), label),
            )
        else:
            if self.counts.get(row.cid, 0) >= self.limits.max_items_per_collection:
                raise Overloaded(
                    f"collection {op.collection!r} is full: {self.counts[row.cid]} items "
                    f"(limits.max_items_per_collection)"
                )
            label = self.next_label
            self.conn.execute(
                "INSERT INTO items (label, cid, id, code, crc) VALUES (?, ?, ?, ?, ?)",
                (label, row.cid, op.id, op.code, db.item_crc(label, row.cid, op.id, op.code)),
            )
            self.next_label += 1
            self.counts[row.cid] = self.counts.get(row.cid, 0) + 1
        # Only now, with every statement done, does the catalog change (a failure above leaves it).
        if new_collection:
            self.catalog[row.name] = row
            self.next_cid += 1
        return Committed(row, label, replaced=found is not None)


def _fields(row: db.CollectionRow) -> tuple[int, str, int, str]:
    return row.cid, row.name, row.bits, row.method


class HashStore(CommittedWrites):
    def __init__(
        self,
        storage: StorageConfig,
        index: IndexConfig,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.storage = storage
        self.index_config = index
        self.limits = limits or LimitsConfig()
        self.directory = Path(storage.data_dir)
        self.collections: dict[str, Collection] = {}
        # Called once with the reason when the store stops taking writes (health -> NOT_SERVING).
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._committer: GroupCommitter[Operation, Committed] = GroupCommitter(
            "hash store", storage.max_batch, self._commit_batch
        )

    # -- lifecycle --

    def recover(self) -> None:
        """Verify the database and rebuild every collection's index (synchronous, before
        serving)."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        migrated = legacy.migrate_if_present(self.directory, self.storage.fsync)
        conn = db.open_checked(self.directory, self.storage.fsync)
        writer = Writer(conn, self.limits)
        try:
            writer.load(self.directory)
            for row in writer.catalog.values():
                coll = Collection(row.name, row.cid, row.bits, row.method, self.index_config)
                for labels, codes in db.load_items(conn, self.directory, row):
                    coll.add(np.asarray(labels, np.int64), np.frombuffer(codes, np.uint8))
                self.collections[row.name] = coll
        except BaseException:
            conn.close()  # now, not whenever it is collected: the repair tool moves these files
            self.collections.clear()
            raise
        self._writer = writer
        self._reader = db.connect(self.directory / db.DB_NAME, self.storage.fsync)
        items = sum(len(c) for c in self.collections.values())
        COLLECTIONS.set(validation.user_collection_count(self.collections))
        ITEMS.set(items)
        HEALTHY.set(1)
        log.info(
            "hash store opened",
            extra={
                "fields": {
                    "items": items,
                    "collections": len(self.collections),
                    "migrated_from_previous_format": migrated,
                    "seconds": round(time.perf_counter() - started, 3),
                }
            },
        )

    async def start(self) -> None:
        if self._writer is None:
            await asyncio.to_thread(self.recover)
        self._committer.start()

    async def close(self) -> None:
        # The committer finishes what it holds first: the connection must be idle before the
        # final checkpoint.
        await self._committer.drain()
        if self._writer is not None:
            try:
                # Fold the WAL into the database so the next start reads one file.
                self._writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("final checkpoint failed (the WAL is replayed at the next start)")
            self._writer.conn.close()
        if self._reader is not None:
            self._reader.close()

    # -- reads --

    def get(self, collection: str, item_id: str) -> bytes | None:
        coll = self.collections.get(collection)
        if coll is None or self._reader is None:
            return None
        row = self._reader.execute(
            "SELECT code FROM items WHERE cid = ? AND id = ?", (coll.cid, item_id)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def ids(self, labels: np.ndarray) -> dict[int, str]:
        """External ids of ``labels`` (labels deleted meanwhile are simply absent)."""
        if len(labels) == 0 or self._reader is None:
            return {}
        found: dict[int, str] = {}
        unique = sorted({int(x) for x in labels})
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._reader.execute(
                    f"SELECT label, id FROM items WHERE label IN ({marks})", chunk
                ).fetchall()
            )
        return found

    # -- the backend interface (services/hash/backend.py) --

    async def info(self, collection: str) -> Collection | None:
        return self.collections.get(collection)

    def collection_count(self) -> int:
        return validation.user_collection_count(self.collections)

    async def read(self, collection: str, item_id: str) -> bytes | None:
        return self.get(collection, item_id)

    async def read_many(self, collection: str, item_ids: list[str]) -> dict[str, bytes]:
        found = {item: self.get(collection, item) for item in item_ids}
        return {item: code for item, code in found.items() if code is not None}

    def _named(self, distances: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
        # The hot index holds labels only; the few of an answer are named from the store
        # (a label deleted meanwhile is simply left out).
        names = self.ids(labels)
        return [
            (names[int(lab)], int(d))
            for d, lab in zip(distances, labels, strict=True)
            if int(lab) in names
        ]

    async def nearest(self, collection: str, query: np.ndarray, k: int) -> list[tuple[str, int]]:
        coll = self.collections.get(collection)
        if coll is None:
            return []
        distances, labels = coll.search(query.reshape(1, -1), k)[0]
        return self._named(distances, labels)

    async def within(
        self, collection: str, query: np.ndarray, max_distance: int, limit: int
    ) -> list[tuple[str, int]]:
        coll = self.collections.get(collection)
        if coll is None:
            return []
        return self._named(*coll.within(query, max_distance, limit))

    # -- writes --

    async def add(
        self, collection: str, item_id: str, code: np.ndarray, bits: int, method: str
    ) -> bool:
        """Commit (fsynced), apply, answer; True when an item was replaced."""
        done = await self._submit(
            Operation(
                "add", collection, item_id, bits, method, np.asarray(code, np.uint8).tobytes()
            )
        )
        return done.replaced

    async def delete(self, collection: str, item_id: str) -> bool:
        if self.get(collection, item_id) is None:
            return False  # nothing to commit
        done = await self._submit(Operation("delete", collection, item_id))
        return done.label >= 0

    async def _submit(self, op: Operation) -> Committed:
        return await self._committer.submit(op)

    async def _commit_batch(self, batch: list[tuple[Operation, asyncio.Future[Committed]]]) -> bool:
        """One SQLite transaction for ``batch``, then its effects in memory; False: failed stop."""
        assert self._writer is not None
        started = time.perf_counter()
        try:
            outcomes = await asyncio.to_thread(self._writer.commit, [op for op, _ in batch])
        except db.StoreFull as exc:
            # Rolled back, nothing applied: these callers are told; later writes are tried
            # again.
            log.error("hash commit refused: %s", exc)
            REJECTED.labels("disk_full").inc(len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(str(exc)))
            return True
        except Exception as exc:
            # An I/O error: what reached the disk is unknown, so stop and let a restart recover.
            for _, future in batch:
                if not future.done():
                    future.set_exception(Unavailable(f"hash store write failed: {exc}"))
            self._committer.fail(
                f"hash store write failed: {exc!r}; restart the service to recover"
            )
            return False
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        COMMIT_OPS.observe(len(batch))
        for (op, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                reason = "limit" if isinstance(outcome, Overloaded) else "invalid"
                REJECTED.labels(reason).inc()
                if not future.done():
                    future.set_exception(outcome)
                continue
            try:
                self._apply(op, outcome)
            except Exception as exc:
                # Disk has it, memory does not: serve nothing stale -- fail stop, restart
                # rebuilds.
                log.exception("applying a committed hash operation failed")
                if not future.done():
                    future.set_exception(Unavailable("hash store failed; restart the service"))
                self._committer.fail(f"applying a committed operation failed: {exc!r}")
                return False
            if not future.done():
                future.set_result(outcome)
        COLLECTIONS.set(validation.user_collection_count(self.collections))
        ITEMS.set(sum(len(c) for c in self.collections.values()))
        return True

    def _apply(self, op: Operation, done: Committed) -> None:
        row = done.collection
        if op.kind == "delete":
            coll = self.collections.get(row.name)
            if coll is not None and done.label >= 0:
                coll.remove(done.label)
            return
        coll = self.collections.get(row.name)
        if coll is None:
            coll = self.collections[row.name] = Collection(
                row.name, row.cid, row.bits, row.method, self.index_config
            )
        code = np.frombuffer(op.code, np.uint8)
        if done.replaced:
            coll.replace(done.label, code)
        else:
            coll.add(np.asarray([done.label], np.int64), code)
