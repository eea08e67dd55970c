"""One named collection in memory: a faiss binary index over int64 labels, nothing else.

The external string ids and the codes themselves live on disk in the store
(``services/hash/db.py``); the hot index holds only what search needs -- the
packed codes and their int64 labels (``IndexBinaryIDMap``), about
``bits / 8 + 8`` bytes per item. Search answers labels; the store turns the few
labels of an answer into ids with one indexed SQLite read.

Small collections use ``IndexBinaryFlat`` (exact). Past ``ivf_threshold``
items the collection is rebuilt once as ``IndexBinaryIVF``: an inverted file
over binary k-means cells that stores whole codes, so the Hamming distances it
returns are exact -- only *which* items are looked at is approximate (``nprobe``
of ``nlist`` cells).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from services.hash.config import IndexConfig


def auto_nlist(items: int) -> int:
    """About one cell per 1000 items, a power of two, at least 256."""
    return int(max(256, 2 ** round(np.log2(max(items, 1) / 1000))))


class Collection:
    def __init__(self, name: str, cid: int, bits: int, method: str, config: IndexConfig) -> None:
        self.name = name
        self.cid = cid  # the store's key of this collection
        self.bits = bits
        self.method = method
        self.config = config
        self.nbytes = bits // 8
        self.index: faiss.IndexBinary = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        self.approximate = False

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # -- mutations (the store calls these only after the operation is committed) --

    def add(self, labels: np.ndarray, codes: np.ndarray) -> None:
        """Index new labels (never ones already present)."""
        if len(labels) == 0:
            return
        self.index.add_with_ids(
            np.ascontiguousarray(codes, np.uint8).reshape(-1, self.nbytes),
            np.ascontiguousarray(labels, np.int64),
        )
        if not self.approximate and len(self) > self.config.ivf_threshold:
            self._switch_to_ivf()

    def replace(self, label: int, code: np.ndarray) -> None:
        self.remove(label)
        self.add(np.asarray([label], np.int64), code)

    def remove(self, label: int) -> None:
        self.index.remove_ids(np.asarray([label], np.int64))

    def _flat_contents(self) -> tuple[np.ndarray, np.ndarray]:
        idmap: Any = self.index  # an IndexBinaryIDMap until the switch
        flat: Any = faiss.downcast_IndexBinary(idmap.index)
        codes = faiss.vector_to_array(flat.xb).reshape(-1, self.nbytes)
        return faiss.vector_to_array(idmap.id_map), codes

    def _switch_to_ivf(self) -> None:
        labels, codes = self._flat_contents()
        nlist = self.config.nlist or auto_nlist(len(labels))
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.bits), self.bits, nlist)
        ivf.nprobe = self.config.nprobe
        # k-means needs a few dozen points per cell; more only slows training.
        rng = np.random.default_rng(0)
        rows = np.arange(len(labels))
        sample = rows if len(rows) <= 64 * nlist else rng.choice(rows, 64 * nlist, replace=False)
        ivf.train(np.ascontiguousarray(codes[np.sort(sample)]))
        ivf.add_with_ids(np.ascontiguousarray(codes), labels)
        self.index = ivf
        self.approximate = True

    # -- reads --

    def search(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(distances, labels) of the ``k`` nearest items of each query, nearest first."""
        k = min(k, len(self))
        if k == 0:
            return [(np.empty(0, np.int32), np.empty(0, np.int64)) for _ in range(len(queries))]
        distances, labels = self.index.search(np.ascontiguousarray(queries, np.uint8), k)
        keep = labels >= 0
        return [(d[m], lab[m]) for d, lab, m in zip(distances, labels, keep, strict=True)]

    def within(
        self, query: np.ndarray, max_distance: int, limit: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, labels) of every item within ``max_distance`` (at most ``limit``, nearest
        first)."""
        if len(self) == 0:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        # faiss returns distances strictly below the radius.
        lims, distances, labels = self.index.range_search(
            np.ascontiguousarray(query.reshape(1, -1), np.uint8), max_distance + 1
        )
        order = np.argsort(distances[lims[0] : lims[1]], kind="stable")[:limit]
        return distances[order], labels[order]
