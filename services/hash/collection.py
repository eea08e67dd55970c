"""One named collection of codes: string ids, a faiss binary index, the codes themselves.

faiss indexes int64 labels; each string id gets a label for life (a replaced
item keeps it). The codes are also kept in a plain array indexed by label so
Get and snapshots need not reconstruct them from the index.

Small collections use ``IndexBinaryFlat`` (exact). Past ``ivf_threshold``
items the collection is rebuilt once as ``IndexBinaryIVF``: an inverted file
over binary k-means cells that stores whole codes, so the Hamming distances it
returns are exact -- only *which* items are looked at is approximate (``nprobe``
of ``nlist`` cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from services.hash.config import IndexConfig


@dataclass(frozen=True)
class Hit:
    id: str
    distance: int


def auto_nlist(items: int) -> int:
    """About one cell per 1000 items, a power of two, at least 256."""
    return int(max(256, 2 ** round(np.log2(max(items, 1) / 1000))))


class Collection:
    def __init__(self, name: str, bits: int, method: str, config: IndexConfig) -> None:
        self.name = name
        self.bits = bits
        self.method = method
        self.config = config
        self.nbytes = bits // 8
        self.labels: dict[str, int] = {}
        self.names: list[str | None] = []
        self.codes = np.zeros((1024, self.nbytes), np.uint8)
        self.index: faiss.IndexBinary = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        self.approximate = False

    def __len__(self) -> int:
        return len(self.labels)

    # -- mutations (the store calls these only after the operation is logged) --

    def put(self, item_id: str, code: np.ndarray) -> bool:
        """Insert or replace; True when an item with this id was replaced."""
        return self.put_many([item_id], code.reshape(1, self.nbytes)) > 0

    def put_many(self, ids: list[str], codes: np.ndarray) -> int:
        """Insert or replace a batch of distinct ids; returns how many were replaced."""
        labels = np.empty(len(ids), np.int64)
        replaced = []
        for i, item_id in enumerate(ids):
            label = self.labels.get(item_id)
            if label is None:
                label = len(self.names)
                self.labels[item_id] = label
                self.names.append(item_id)
            else:
                replaced.append(label)
            labels[i] = label
        if replaced:
            self.index.remove_ids(np.asarray(replaced, np.int64))
        self._grow(len(self.names))
        self.codes[labels] = codes
        self.index.add_with_ids(np.ascontiguousarray(codes, np.uint8), labels)
        if not self.approximate and len(self.labels) > self.config.ivf_threshold:
            self._switch_to_ivf()
        return len(replaced)

    def remove(self, item_id: str) -> bool:
        label = self.labels.pop(item_id, None)
        if label is None:
            return False
        self.names[label] = None
        self.index.remove_ids(np.asarray([label], np.int64))
        return True

    def _grow(self, rows: int) -> None:
        if rows > self.codes.shape[0]:
            bigger = np.zeros((max(rows, 2 * self.codes.shape[0]), self.nbytes), np.uint8)
            bigger[: self.codes.shape[0]] = self.codes
            self.codes = bigger

    def _alive(self) -> np.ndarray:
        return np.fromiter(self.labels.values(), np.int64, len(self.labels))

    def _switch_to_ivf(self) -> None:
        alive = np.sort(self._alive())
        nlist = self.config.nlist or auto_nlist(len(alive))
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.bits), self.bits, nlist)
        ivf.nprobe = self.config.nprobe
        # k-means needs a few dozen points per cell; more only slows training.
        rng = np.random.default_rng(0)
        sample = alive if len(alive) <= 64 * nlist else rng.choice(alive, 64 * nlist, replace=False)
        ivf.train(np.ascontiguousarray(self.codes[sample]))
        ivf.add_with_ids(np.ascontiguousarray(self.codes[alive]), alive)
        self.index = ivf
        self.approximate = True

    # -- reads --

    def get(self, item_id: str) -> np.ndarray | None:
        label = self.labels.get(item_id)
        return None if label is None else self.codes[label].copy()

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest items of each query, nearest first."""
        k = min(k, len(self.labels))
        if k == 0:
            return [[] for _ in range(len(queries))]
        distances, labels = self.index.search(np.ascontiguousarray(queries, np.uint8), k)
        return [self._hits(d, lab) for d, lab in zip(distances, labels, strict=True)]

    def within(self, query: np.ndarray, max_distance: int, limit: int) -> list[Hit]:
        """Every item within ``max_distance`` of ``query`` (at most ``limit``, nearest first)."""
        if not self.labels:
            return []
        # faiss returns distances strictly below the radius.
        lims, distances, labels = self.index.range_search(
            np.ascontiguousarray(query.reshape(1, -1), np.uint8), max_distance + 1
        )
        order = np.argsort(distances[lims[0] : lims[1]], kind="stable")[:limit]
        return self._hits(distances[order], labels[order])

    def _hits(self, distances: np.ndarray, labels: np.ndarray) -> list[Hit]:
        hits = []
        for d, label in zip(distances, labels, strict=True):
            if label < 0:
                continue
            name = self.names[label]
            if name is not None:
                hits.append(Hit(name, int(d)))
        return hits

    # -- snapshots --

    def export_state(self) -> dict[str, np.ndarray]:
        """Alive ids and codes as arrays (ids as one UTF-8 blob plus offsets: any string survives)."""
        alive = np.sort(self._alive())
        encoded = [self.names[i].encode("utf-8") for i in alive]  # type: ignore[union-attr]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum([len(e) for e in encoded])
        return {
            "id_blob": np.frombuffer(b"".join(encoded), np.uint8),
            "id_offsets": offsets,
            "codes": self.codes[alive].copy(),
        }

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        blob = state["id_blob"].tobytes()
        offsets = state["id_offsets"]
        ids = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
        if ids:
            self.put_many(ids, state["codes"])
