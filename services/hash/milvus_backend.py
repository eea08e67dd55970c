"""Collections in Milvus: binary vectors with Hamming search, through pymilvus's MilvusClient.

One VisionMesh collection is one Milvus collection (``<prefix><name>_<hash>``;
Milvus names allow only letters, digits and '_') with three fields: ``key``,
the INT64 primary key (the first 8 bytes of the id's SHA-256), ``id``, the
external id (VARCHAR, ``limits.max_id_bytes`` long), and ``code``
(BINARY_VECTOR of the collection's bits), indexed BIN_FLAT or BIN_IVF_FLAT with
the HAMMING metric. Lookups go by ``key``: an id never has to be spelled inside
a filter expression (milvus-lite does not decode escapes such as ``\n`` there).
Two ids with one key are refused, never merged (every lookup compares the
stored id). The collection's own name, code size and method are kept in its
schema's description, so any replica pointed at the same Milvus finds them.

Writes go through one committer task, as in the SQLite store: it takes every
pending Add/Delete (up to ``storage.max_batch``), checks which ids exist with
one query per collection, and sends one upsert and one delete per collection.
Callers are answered after Milvus acknowledged the write -- Milvus has then
logged it (rocksmq, Pulsar or Kafka), so it survives a SIGKILL of this process
and of Milvus. A record that breaks a rule fails alone; a Milvus call that
fails (unreachable, timed out) fails the operations it carried with
UNAVAILABLE, and the collection's item count is read again from Milvus before
its next write.

Reads use ``index.milvus.consistency_level`` (default Session: this service's
acknowledged writes are visible to its own reads, as with faiss). The calls are
blocking; they run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Histogram
from pymilvus import DataType, MilvusClient, MilvusException

from services.common.config import ConfigError
from services.common.errors import InvalidInput, Overloaded, ServiceError, Unavailable
from services.hash import validation
from services.hash.committer import HEALTHY, CommittedWrites, GroupCommitter
from services.hash.config import IndexConfig, LimitsConfig, MilvusConfig
from services.hash.store import COLLECTIONS, ITEMS, REJECTED

log = logging.getLogger(__name__)

MILVUS_SECONDS = Histogram(
    "visionmesh_hash_milvus_seconds",
    "Time of one Milvus call of the hash service, by operation",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)

KEY_FIELD, ID_FIELD, CODE_FIELD = "key", "id", "code"
# Format of the description that names a Milvus collection's VisionMesh collection.
DESCRIPTION_KIND = "visionmesh-hash/1"
# Seconds after a delete during which Session reads of that collection read Strong: Milvus
# 2.3 answers a delete without its timestamp, so pymilvus's session clock does not move and a
# Session read right after it could still see the deleted item.
STRONG_AFTER_DELETE_S = 10.0
# The most keys one query's ``key in [...]`` expression carries.
QUERY_CHUNK = 1024


@dataclass(frozen=True)
class MilvusCollection:
    name: str
    bits: int
    method: str
    milvus_name: str


@dataclass
class _Op:
    kind: str  # "add" or "delete"
    collection: str
    id: str
    bits: int = 0
    method: str = ""
    code: bytes = b""


def milvus_name(prefix: str, name: str) -> str:
    """A Milvus collection name for ``name``: readable, and distinct for distinct names."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", name)[:100]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{readable}_{digest}"


def key_of(item_id: str) -> int:
    """The INT64 primary key of an external id."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def keys_filter(keys: list[int]) -> str:
    return f"{KEY_FIELD} in [{', '.join(str(k) for k in keys)}]"


def collision(name: str, item_id: str, stored: str) -> InvalidInput:
    return InvalidInput(
        f"id {item_id!r:.80} shares its Milvus key with id {stored!r:.80} already in collection "
        f"{name!r}; choose another id"
    )


def _code_bytes(value: Any) -> bytes:
    # pymilvus answers a binary vector as bytes, or as a list holding one bytes object.
    if isinstance(value, list | tuple):
        value = value[0]
    return bytes(value)


class MilvusCollections(CommittedWrites):
    """The hash service's collections in Milvus (a ``backend.CollectionBackend``)."""

    def __init__(
        self,
        config: MilvusConfig,
        index: IndexConfig,
        limits: LimitsConfig | None = None,
        max_batch: int = 4096,
    ) -> None:
        self.config = config
        self.index_config = index
        self.limits = limits or LimitsConfig()
        # Most operations one committer round carries (storage.max_batch).
        self.max_batch = max_batch
        self.client: MilvusClient | None = None
        self.catalog: dict[str, MilvusCollection] = {}
        self.counts: dict[str, int] = {}
        self._stale_counts: set[str] = set()
        self._deleted_at: dict[str, float] = {}
        # Per call; at start (loading and counting collections after a server restart) longer.
        self._timeout = config.timeout_s
        self._committer: GroupCommitter[_Op, bool] = GroupCommitter(
            "Milvus backend", max_batch, self._commit_batch
        )

    # -- lifecycle --

    def _call(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Milvus call, timed; its errors become Unavailable (the request may be retried)."""
        assert self.client is not None, "the Milvus backend is not started"
        kwargs.setdefault("timeout", self._timeout)
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            HEALTHY.set(0)
            raise Unavailable(f"Milvus {operation} failed: {exc.message or exc}") from exc
        except Exception as exc:  # grpc errors (unreachable, deadline) reach us unwrapped
            HEALTHY.set(0)
            raise Unavailable(f"Milvus {operation} failed: {exc!r}") from exc
        finally:
            MILVUS_SECONDS.labels(operation).observe(time.perf_counter() - started)

    def connect(self) -> None:
        """Connect (waiting up to ``connect_timeout_s`` for a server still starting) and load
        the catalog. Synchronous, before serving."""
        started = time.monotonic()
        deadline = started + self.config.connect_timeout_s
        kwargs: dict[str, Any] = {"uri": self.config.uri}
        if self.config.token:
            kwargs["token"] = self.config.token
        if self.config.db_name:
            kwargs["db_name"] = self.config.db_name
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = MilvusClient(timeout=min(10.0, self.config.connect_timeout_s), **kwargs)
                client.list_collections(timeout=self.config.timeout_s)
                self.client = client
                break
            except MilvusException as exc:
                last = exc
                if "milvus-lite" in str(exc) or "milvus_lite" in str(exc):
                    raise ConfigError(
                        f"index.milvus.uri {self.config.uri!r} is a milvus-lite file, but "
                        f"milvus-lite cannot be loaded here ({exc.message}); serve it as a "
                        "process (python -m services.hash.milvus_local lite) and give its "
                        "http:// URI"
                    ) from exc
            except Exception as exc:  # unreachable yet: grpc's own errors
                last = exc
            time.sleep(1.0)
        if self.client is None:
            raise Unavailable(
                f"Milvus at {self.config.uri} did not answer within "
                f"{self.config.connect_timeout_s:.0f} s (index.milvus.connect_timeout_s): {last}"
            )
        self._timeout = max(self.config.timeout_s, self.config.connect_timeout_s)
        try:
            for mname in self._call("list_collections", self.client.list_collections):
                if mname.startswith(self.config.collection_prefix):
                    self._adopt(mname)
        finally:
            self._timeout = self.config.timeout_s
        HEALTHY.set(1)
        self._publish()
        log.info(
            "hash collections in Milvus",
            extra={
                "fields": {
                    "uri": self.config.uri,
                    "collections": validation.user_collection_count(self.catalog),
                    "items": sum(self.counts.values()),
                    "seconds": round(time.monotonic() - started, 3),
                }
            },
        )

    def _adopt(self, mname: str) -> MilvusCollection | None:
        """Add a Milvus collection of ours to the catalog (None: not one of ours)."""
        assert self.client is not None
        described = self._call("describe_collection", self.client.describe_collection, mname)
        try:
            meta = json.loads(described.get("description") or "{}")
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("kind") != DESCRIPTION_KIND:
            return None
        coll = MilvusCollection(str(meta["name"]), int(meta["bits"]), str(meta["method"]), mname)
        self._call("load_collection", self.client.load_collection, mname)
        self.catalog[coll.name] = coll
        self.counts[coll.name] = self._count(coll)
        return coll

    def _count(self, coll: MilvusCollection) -> int:
        assert self.client is not None
        rows = self._call(
            "count",
            self.client.query,
            coll.milvus_name,
            filter="",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])

    def _publish(self) -> None:
        COLLECTIONS.set(validation.user_collection_count(self.catalog))
        ITEMS.set(sum(self.counts.values()))

    async def start(self) -> None:
        if self.client is None:
            await asyncio.to_thread(self.connect)
        self._committer.start()

    async def close(self) -> None:
        await self._committer.drain()
        if self.client is not None:
            await asyncio.to_thread(self.client.close)
            self.client = None

    # -- reads --

    async def info(self, collection: str) -> MilvusCollection | None:
        coll = self.catalog.get(collection)
        if coll is not None or self.client is None:
            return coll
        # Another replica may have created it in the same Milvus.
        mname = milvus_name(self.config.collection_prefix, collection)
        exists = await asyncio.to_thread(
            self._call, "has_collection", self.client.has_collection, mname
        )
        if not exists:
            return None
        adopted = await asyncio.to_thread(self._adopt, mname)
        self._publish()
        return adopted

    def _recently_deleted(self, collection: str) -> bool:
        deleted = self._deleted_at.get(collection)
        return deleted is not None and time.monotonic() - deleted < STRONG_AFTER_DELETE_S

    def _level(self, collection: str) -> str:
        """The consistency level of a read of ``collection`` now."""
        level = self.config.consistency_level
        if level == "Session" and self._recently_deleted(collection):
            return "Strong"
        return level

    def collection_count(self) -> int:
        return validation.user_collection_count(self.catalog)

    async def read(self, collection: str, item_id: str) -> bytes | None:
        return (await self.read_many(collection, [item_id])).get(item_id)

    async def read_many(self, collection: str, item_ids: list[str]) -> dict[str, bytes]:
        coll = self.catalog.get(collection)
        if coll is None or self.client is None or not item_ids:
            return {}
        rows = await asyncio.to_thread(
            self._call,
            "get",
            self.client.query,
            coll.milvus_name,
            filter=keys_filter([key_of(item) for item in item_ids]),
            output_fields=[ID_FIELD, CODE_FIELD],
            consistency_level=self._level(collection),
        )
        wanted = set(item_ids)  # keys are hashes of ids: keep the rows of the ids asked for
        return {r[ID_FIELD]: _code_bytes(r[CODE_FIELD]) for r in rows if r[ID_FIELD] in wanted}

    def _search_params(self, coll: MilvusCollection, extra: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = dict(extra)
        if self.config.index_type == "BIN_IVF_FLAT":
            params["nprobe"] = self.index_config.nprobe
        return {"metric_type": "HAMMING", "params": params}

    def _search(
        self, coll: MilvusCollection, query: np.ndarray, limit: int, params: dict[str, Any]
    ) -> list[tuple[str, int]]:
        assert self.client is not None
        hits = self._call(
            "search",
            self.client.search,
            coll.milvus_name,
            data=[np.ascontiguousarray(query, np.uint8).tobytes()],
            limit=limit,
            search_params=self._search_params(coll, params),
            output_fields=[ID_FIELD],
            consistency_level=self._level(coll.name),
        )
        found = [(str(hit["entity"][ID_FIELD]), int(round(hit["distance"]))) for hit in hits[0]]
        found.sort(key=lambda pair: pair[1])  # stable: Milvus's order among equal distances
        return found

    async def nearest(self, collection: str, query: np.ndarray, k: int) -> list[tuple[str, int]]:
        coll = self.catalog.get(collection)
        if coll is None or k <= 0:
            return []
        return await asyncio.to_thread(self._search, coll, query, k, {})

    async def within(
        self, collection: str, query: np.ndarray, max_distance: int, limit: int
    ) -> list[tuple[str, int]]:
        coll = self.catalog.get(collection)
        if coll is None or limit <= 0:
            return []
        # A range search: range_filter <= distance < radius.
        params = {"radius": max_distance + 1, "range_filter": 0}
        found = await asyncio.to_thread(self._search, coll, query, limit, params)
        return [(i, d) for i, d in found if d <= max_distance]

    # -- writes --

    async def add(
        self, collection: str, item_id: str, code: np.ndarray, bits: int, method: str
    ) -> bool:
        packed = np.asarray(code, np.uint8).tobytes()
        return await self._submit(_Op("add", collection, item_id, bits, method, packed))

    async def delete(self, collection: str, item_id: str) -> bool:
        if collection not in self.catalog:
            return False  # nothing to write
        return await self._submit(_Op("delete", collection, item_id))

    async def _submit(self, op: _Op) -> bool:
        return await self._committer.submit(op)

    async def _commit_batch(self, batch: list[tuple[_Op, asyncio.Future[bool]]]) -> bool:
        outcomes = await asyncio.to_thread(self._commit, [op for op, _ in batch])
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                if isinstance(outcome, Overloaded):
                    REJECTED.labels("limit").inc()
                elif isinstance(outcome, InvalidInput):
                    REJECTED.labels("invalid").inc()
                if not future.done():
                    future.set_exception(outcome)
            elif not future.done():
                future.set_result(outcome)
        self._publish()
        return True

    def _commit(self, batch: list[_Op]) -> list[bool | ServiceError]:
        """Every operation of ``batch``, one collection at a time (worker thread)."""
        outcomes: dict[int, bool | ServiceError] = {}
        by_collection: dict[str, list[tuple[int, _Op]]] = {}
        for n, op in enumerate(batch):
            try:
                self._check(op)
            except ServiceError as exc:
                outcomes[n] = exc
                continue
            by_collection.setdefault(op.collection, []).append((n, op))
        for name, ops in by_collection.items():
            try:
                outcomes.update(self._commit_collection(name, ops))
            except ServiceError as exc:
                outcomes.update({n: exc for n, _ in ops})
            except Exception as exc:  # a bug: fail these, keep serving
                log.exception("Milvus write of collection %r failed", name)
                outcomes.update({n: Unavailable(f"Milvus write failed: {exc!r}") for n, _ in ops})
        return [outcomes[n] for n in range(len(batch))]

    def _check(self, op: _Op) -> None:
        validation.stored_collection_name(op.collection)
        validation.item_id(op.id, self.limits.max_id_bytes)
        if op.kind == "delete":
            return
        if op.kind != "add":
            raise InvalidInput(f"unknown operation {op.kind!r}")
        validation.method(op.method)
        validation.code_bytes(op.code, op.bits)

    def _create(self, op: _Op) -> MilvusCollection:
        assert self.client is not None
        validation.collection_limit(self.catalog, op.collection, self.limits.max_collections)
        mname = milvus_name(self.config.collection_prefix, op.collection)
        if self._call("has_collection", self.client.has_collection, mname):
            adopted = self._adopt(mname)  # made by another replica meanwhile
            if adopted is not None:
                return adopted
        meta = {"kind": DESCRIPTION_KIND, "name": op.collection, "bits": op.bits}
        meta["method"] = op.method
        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False, description=json.dumps(meta)
        )
        schema.add_field(KEY_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(ID_FIELD, DataType.VARCHAR, max_length=self.limits.max_id_bytes)
        schema.add_field(CODE_FIELD, DataType.BINARY_VECTOR, dim=op.bits)
        index = self.client.prepare_index_params()
        params: dict[str, Any] = {}
        if self.config.index_type == "BIN_IVF_FLAT":
            params["nlist"] = self.index_config.nlist or 1024
        index.add_index(
            CODE_FIELD, index_type=self.config.index_type, metric_type="HAMMING", params=params
        )
        self._call(
            "create_collection",
            self.client.create_collection,
            mname,
            schema=schema,
            index_params=index,
            consistency_level=self.config.consistency_level,
        )
        coll = MilvusCollection(op.collection, op.bits, op.method, mname)
        self.catalog[coll.name] = coll
        self.counts[coll.name] = 0
        return coll

    def _existing(self, coll: MilvusCollection, ids: list[str]) -> dict[int, str]:
        """The stored id of each of ``ids``'s keys that is present."""
        assert self.client is not None
        keys = sorted({key_of(i) for i in ids})
        found: dict[int, str] = {}
        for start in range(0, len(keys), QUERY_CHUNK):
            rows = self._call(
                "exists",
                self.client.query,
                coll.milvus_name,
                filter=keys_filter(keys[start : start + QUERY_CHUNK]),
                output_fields=[KEY_FIELD, ID_FIELD],
                # This service's own earlier writes must be seen: read-your-writes at least.
                consistency_level="Strong"
                if self.config.consistency_level == "Strong" or self._recently_deleted(coll.name)
                else "Session",
            )
            found.update((int(r[KEY_FIELD]), str(r[ID_FIELD])) for r in rows)
        return found

    def _commit_collection(
        self, name: str, ops: list[tuple[int, _Op]]
    ) -> dict[int, bool | ServiceError]:
        assert self.client is not None
        outcomes: dict[int, bool | ServiceError] = {}
        coll = self.catalog.get(name)
        if coll is None:
            adds = [(n, op) for n, op in ops if op.kind == "add"]
            if not adds:
                return {n: False for n, _ in ops}  # deletes in a collection that is not there
            coll = self._create(adds[0][1])
        if name in self._stale_counts:
            self.counts[name] = self._count(coll)
            self._stale_counts.discard(name)
        unique_ids = list(dict.fromkeys(op.id for _, op in ops))
        stored = self._existing(coll, unique_ids)
        before = {i for i in unique_ids if stored.get(key_of(i)) == i}
        present = set(before)
        count = self.counts.get(name, 0)
        # Replay the operations in order over what exists; the last one of each id decides
        # what is written (one upsert and one delete for the whole batch).
        final: dict[str, _Op] = {}
        members: dict[str, list[int]] = {}
        for n, op in ops:
            held = stored.get(key_of(op.id))
            if held is not None and held != op.id:
                outcomes[n] = collision(name, op.id, held)
                continue
            exists = op.id in present
            if op.kind == "delete":
                outcomes[n] = exists
                if exists:
                    present.discard(op.id)
                    count -= 1
                    final[op.id] = op
                    members.setdefault(op.id, []).append(n)
                continue
            if op.bits != coll.bits or op.method != coll.method:
                outcomes[n] = InvalidInput(
                    f"collection {name!r} holds {coll.bits}-bit {coll.method} codes, "
                    f"not {op.bits}-bit {op.method}"
                )
                continue
            if not exists and count >= self.limits.max_items_per_collection:
                outcomes[n] = Overloaded(
                    f"collection {name!r} is full: {count} items (limits.max_items_per_collection)"
                )
                continue
            outcomes[n] = exists  # replaced
            if not exists:
                present.add(op.id)
                count += 1
            final[op.id] = op
            members.setdefault(op.id, []).append(n)
        # New ids are inserted, existing ones upserted (an upsert is a delete and an insert).
        new = [i for i, op in final.items() if op.kind == "add" and i not in before]
        replaced = [i for i, op in final.items() if op.kind == "add" and i in before]
        gone = [i for i, op in final.items() if op.kind == "delete"]
        healthy = True
        for operation, ids in (("insert", new), ("upsert", replaced), ("delete", gone)):
            if not ids:
                continue
            try:
                self._write(operation, coll, [final[i] for i in ids])
            except ServiceError as exc:
                # Unknown whether Milvus applied it: count again before the next write.
                self._stale_counts.add(name)
                healthy = False
                for item in ids:
                    for n in members[item]:
                        outcomes[n] = exc
        if healthy:
            self.counts[name] = count
            HEALTHY.set(1)
        return outcomes

    def _write(self, operation: str, coll: MilvusCollection, ops: list[_Op]) -> None:
        assert self.client is not None
        for start in range(0, len(ops), QUERY_CHUNK):
            chunk = ops[start : start + QUERY_CHUNK]
            if operation == "delete":
                self._deleted_at[coll.name] = time.monotonic()
                where = keys_filter([key_of(op.id) for op in chunk])
                self._call(operation, self.client.delete, coll.milvus_name, filter=where)
            else:
                rows = [
                    {KEY_FIELD: key_of(op.id), ID_FIELD: op.id, CODE_FIELD: op.code} for op in chunk
                ]
                fn = self.client.insert if operation == "insert" else self.client.upsert
                self._call(operation, fn, coll.milvus_name, rows)
