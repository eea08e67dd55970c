"""The hash service's collections on faiss + SQLite beside Milvus (standalone server, milvus-lite).

Each side is the service's own backend object (``services/hash/backend.py``),
in this process, no gRPC in front: the same 128-bit codes and ids go to each.

- fill: ``--items`` Adds with 4096 in flight (group commit / one Milvus insert
  per batch), inserts/s;
- durable adds/s with 16 callers, each awaiting its Add before the next;
- nearest-10 search of ``--queries`` codes, one at a time, round by round in
  turn (bench/harness.py): p50 and p99 ms per side, and Milvus / faiss per round;
- reopen: a fresh backend object on the same data until it serves (faiss: verify
  SQLite and rebuild the index; Milvus: connect and load the catalog) and, for
  the standalone server, a clean server restart until it serves.

Needs make setup-milvus (a side whose wheel is absent is left out, and said so).

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_hash_milvus --write
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness import Ratio, Report, Side, alternate, fmt
from services.hash import milvus_local
from services.hash.backend import CollectionBackend
from services.hash.config import IndexConfig, LimitsConfig, MilvusConfig, StorageConfig
from services.hash.milvus_backend import MilvusCollections
from services.hash.store import HashStore

BITS = 128
COLLECTION = "bench"


def codes_for(start: int, count: int) -> np.ndarray:
    return np.random.default_rng(start).integers(0, 256, (count, BITS // 8), dtype=np.uint8)


class Backend:
    """One side: how to open its backend, and the server behind it (Milvus)."""

    def __init__(self, key: str, work: Path) -> None:
        self.key = key
        self.work = work / key
        self.server: milvus_local.LocalMilvus | None = None
        self.store: CollectionBackend | None = None
        self.loop = asyncio.new_event_loop()

    def open(self) -> CollectionBackend:
        if self.key == "faiss":
            return HashStore(StorageConfig(data_dir=str(self.work)), IndexConfig(), LimitsConfig())
        assert self.server is not None
        return MilvusCollections(MilvusConfig(uri=self.server.uri), IndexConfig(), LimitsConfig())

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def start(self) -> float:
        """Start (the server, then the backend); seconds until the backend serves."""
        if self.key != "faiss" and self.server is None:
            self.server = milvus_local.LocalMilvus(self.key.removeprefix("milvus-"), self.work)
            self.server.start(180)
        started = time.perf_counter()
        self.store = self.open()
        self.run(self.store.start())
        return time.perf_counter() - started

    def close(self) -> None:
        if self.store is not None:
            self.run(self.store.close())
            self.store = None

    def stop(self) -> None:
        self.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.loop.close()


async def fill(store: CollectionBackend, items: int, in_flight: int = 4096) -> float:
    started = time.perf_counter()
    for first in range(0, items, in_flight):
        count = min(in_flight, items - first)
        codes = codes_for(first, count)
        await asyncio.gather(
            *(
                store.add(COLLECTION, f"video-{first + i}", codes[i], BITS, "itq")
                for i in range(count)
            )
        )
    return items / (time.perf_counter() - started)


async def callers(store: CollectionBackend, count: int, concurrency: int) -> float:
    codes = codes_for(10**9, count)
    todo = iter(range(count))

    async def caller() -> None:
        for i in todo:
            await store.add("adds", f"add-{i}", codes[i], BITS, "itq")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def searcher(side: Backend, queries: np.ndarray, samples: list[float]) -> Callable[[], float]:
    async def one_round() -> float:
        assert side.store is not None
        times = []
        for q in queries:
            started = time.perf_counter()
            found = await side.store.nearest(COLLECTION, q, 10)
            times.append((time.perf_counter() - started) * 1000)
            assert len(found) == 10
        samples.extend(times)
        return statistics.median(times)

    return lambda: float(side.run(one_round()))  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="searches per round per side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--adds", type=int, default=2000, help="Adds of the 16-caller run")
    parser.add_argument("--dir", default=".", help="where the data goes (the disk measured)")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md's section")
    args = parser.parse_args()
    report = Report("hash-milvus", "Hash service: faiss beside Milvus", max_spread=0.5)
    keys = ["faiss"]
    missing = []
    for key, package in (("milvus-standalone", "milvus"), ("milvus-lite", "milvus_lite")):
        try:
            milvus_local.package_dir(package)
            keys.append(key)
        except milvus_local.MilvusNotInstalled as exc:
            missing.append(f"{key}: {exc}")
    work = Path(tempfile.mkdtemp(prefix="bench-hash-milvus-", dir=args.dir))
    sides = {k: Backend(k, work) for k in keys}
    fills, adds, reopen, server_restart = {}, {}, {}, 0.0
    samples: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for key, side in sides.items():
            side.start()
            assert side.store is not None
            fills[key] = float(side.run(fill(side.store, args.items)))  # type: ignore[arg-type]
            adds[key] = float(side.run(callers(side.store, args.adds, 16)))  # type: ignore[arg-type]
            print(f"{key}: fill {fills[key]:,.0f}/s, 16 callers {adds[key]:,.0f}/s", flush=True)
        queries = codes_for(7, args.queries)
        harness_sides = [
            Side(
                key,
                {"faiss": "faiss + SQLite (in process)"}.get(key, f"Milvus {key[7:]} (pymilvus)"),
                "faiss: OpenMP (2 cores)" if key == "faiss" else "Milvus server threads",
                "1 search at a time",
                "one nearest-10 search, its ids named",
                searcher(side, queries, samples[key]),
                unit="ms p50",
            )
            for key, side in sides.items()
        ]
        values = alternate(harness_sides, args.rounds)
        for key, side in sides.items():
            side.close()
            reopen[key] = side.start()
        if "milvus-standalone" in sides:
            side = sides["milvus-standalone"]
            side.close()
            assert side.server is not None
            started = time.perf_counter()
            side.server.stop()
            side.server.start(180)
            side.start()
            server_restart = time.perf_counter() - started
    finally:
        for side in sides.values():
            side.stop()
        shutil.rmtree(work, ignore_errors=True)

    report.add(
        f"{args.items:,} random {BITS}-bit codes per side, the same on each; each side is the "
        "service's backend object in this process (no gRPC in front). Milvus: exact BIN_FLAT "
        "index, HAMMING, reads at Session consistency; faiss: exact IndexBinaryFlat (below its "
        "IVF threshold)."
    )
    report.sides(harness_sides)
    ratios = [Ratio(f"{k} / faiss, search p50", k, "faiss") for k in keys if k != "faiss"]
    report.figures(harness_sides, values, ratios)
    rows = [
        "| side | fill, 4096 in flight | adds/s, 16 callers | search p50 | search p99 | reopen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        p50 = float(np.percentile(samples[key], 50))
        p99 = float(np.percentile(samples[key], 99))
        rows.append(
            f"| {key} | {fills[key]:,.0f}/s | {adds[key]:,.0f}/s | {fmt(p50)} ms | {fmt(p99)} ms "
            f"| {reopen[key]:.2f} s |"
        )
    report.add("\n".join(rows))
    notes = []
    if server_restart:
        notes.append(
            f"A clean restart of the standalone server until the backend serves again took "
            f"{server_restart:.1f} s."
        )
    notes += [f"Left out: {m}." for m in missing]
    if notes:
        report.add("\n".join(notes))
    if not args.write:
        print("\n\n".join(report.parts))
        return 0
    return 0 if report.write() else 3


if __name__ == "__main__":
    raise SystemExit(main())
