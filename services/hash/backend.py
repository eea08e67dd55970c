"""Where the hash service keeps its collections: the interface and the configured choice.

Two implementations, chosen by ``index.backend`` alone (the service, its
validation, limits, metrics, health and error codes are the same on both):

* ``faiss``: :class:`services.hash.store.HashStore` -- faiss indexes in this
  process's memory, every write group-committed to SQLite on local disk.
* ``milvus``: :class:`services.hash.milvus_backend.MilvusCollections` -- a
  Milvus server, cluster or milvus-lite file holds codes and ids; this process
  holds only the catalog (names, code sizes, item counts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from services.common.config import ConfigError
from services.hash.config import CONSISTENCY_LEVELS, MILVUS_INDEX_TYPES, HashConfig

BACKENDS = ("faiss", "milvus")


class CollectionInfo(Protocol):
    """What the service checks requests against: a collection's code size and method."""

    @property
    def name(self) -> str: ...
    @property
    def bits(self) -> int: ...
    @property
    def method(self) -> str: ...


class CollectionBackend(Protocol):
    """Durable named collections of binary codes.

    ``add`` and ``delete`` answer only once the write is durable (an acknowledged
    write survives SIGKILL of this process); they raise ``InvalidInput`` for a
    record that breaks a rule, ``Overloaded`` past a limit and ``Unavailable``
    when the store cannot take writes. Reads of a missing collection answer
    empty (the servicer turns that into NOT_FOUND where the API says so).
    """

    # Called once with the reason when the backend stops taking writes for good (health ->
    # NOT_SERVING); a passing outage of a remote store answers UNAVAILABLE per request instead.
    on_failure: Callable[[str], None] | None

    @property
    def failure(self) -> str: ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def info(self, collection: str) -> CollectionInfo | None: ...
    def collection_count(self) -> int: ...

    async def add(
        self, collection: str, item_id: str, code: np.ndarray, bits: int, method: str
    ) -> bool:
        """True when an item of that id was replaced."""
        ...

    async def delete(self, collection: str, item_id: str) -> bool: ...
    async def read(self, collection: str, item_id: str) -> bytes | None: ...
    async def read_many(self, collection: str, item_ids: list[str]) -> dict[str, bytes]:
        """The stored codes of those of ``item_ids`` that exist."""
        ...

    async def nearest(self, collection: str, query: np.ndarray, k: int) -> list[tuple[str, int]]:
        """(id, Hamming distance) of the ``k`` nearest items, nearest first."""
        ...

    async def within(
        self, collection: str, query: np.ndarray, max_distance: int, limit: int
    ) -> list[tuple[str, int]]:
        """(id, distance) of every item within ``max_distance`` (at most ``limit``, nearest
        first)."""
        ...


def check(config: HashConfig) -> None:
    """Refuse a backend setting that cannot work, before anything starts."""
    index = config.index
    if index.backend not in BACKENDS:
        raise ConfigError(
            f"index.backend must be one of {', '.join(BACKENDS)}, got {index.backend!r}"
        )
    if index.backend != "milvus":
        return
    milvus = index.milvus
    if not milvus.uri:
        raise ConfigError(
            "index.backend is milvus but index.milvus.uri is empty: give http://host:19530 "
            "(a server or cluster) or a milvus-lite file path ending in .db"
        )
    if milvus.consistency_level not in CONSISTENCY_LEVELS:
        raise ConfigError(
            f"index.milvus.consistency_level must be one of {', '.join(CONSISTENCY_LEVELS)}, "
            f"got {milvus.consistency_level!r}"
        )
    if milvus.index_type not in MILVUS_INDEX_TYPES:
        raise ConfigError(
            f"index.milvus.index_type must be one of {', '.join(MILVUS_INDEX_TYPES)}, "
            f"got {milvus.index_type!r}"
        )
    if milvus.timeout_s <= 0 or milvus.connect_timeout_s <= 0:
        raise ConfigError("index.milvus.timeout_s and connect_timeout_s must be positive")
    if not milvus.collection_prefix or not milvus.collection_prefix[0].isalpha():
        raise ConfigError("index.milvus.collection_prefix must start with a letter")


def open_backend(config: HashConfig) -> CollectionBackend:
    check(config)
    if config.index.backend == "milvus":
        # Imported here: pymilvus is only needed where Milvus is configured.
        from services.hash.milvus_backend import MilvusCollections

        return MilvusCollections(
            config.index.milvus, config.index, config.limits, config.storage.max_batch
        )
    from services.hash.store import HashStore

    return HashStore(config.storage, config.index, config.limits)
