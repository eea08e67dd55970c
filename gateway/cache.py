"""Result cache: content digest + requested features -> serialized answer.

Bounded by bytes, least-recently-used eviction, entries expire after a TTL, so
repeated frames of a live stream cost nothing while stale answers age out.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

CACHE_EVENTS = Counter("visionmesh_gateway_cache_total", "Result cache lookups", ["result"])
CACHE_BYTES = Gauge("visionmesh_gateway_cache_bytes", "Bytes held by the result cache")


class ResultCache:
    def __init__(
        self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] > self.ttl_s:
            self._remove(key)
            entry = None
        if entry is None:
            CACHE_EVENTS.labels("miss").inc()
            return None
        self._entries.move_to_end(key)
        CACHE_EVENTS.labels("hit").inc()
        return entry[1]

    def put(self, key: str, value: bytes) -> None:
        if self.max_bytes <= 0 or len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock(), value)
        self._bytes += len(value)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
        CACHE_BYTES.set(self._bytes)

    def _remove(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)
        CACHE_BYTES.set(self._bytes)
