"""The hash store's durable write rate, restart time and memory per item.

In-process ``HashStore`` (no gRPC), 128-bit codes, string ids ``video-<n>``:

- durable adds/s with 1 caller and with 16 callers (each caller awaits its
  Add before sending the next; group commit batches the 16);
- fill to ``--items`` with 4096 Adds in flight, clean shutdown, then a fresh
  process opens the store: the time to serve again (verification + faiss
  rebuild) and the anonymous resident memory (RssAnon) it added, per item; the store's bytes on
  disk per item.

The same script runs against any checkout whose ``services.hash.store`` has the
``HashStore(storage, index)`` / ``start`` / ``add`` / ``close`` / ``recover``
interface, so the previous store can be measured beside the current one:

    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_hash_store --items 1000000
    flock /tmp/visionmesh-bench.lock .venv/bin/python -m bench.bench_hash_store --index-items
    10000000
    PYTHONPATH=/path/to/older/checkout .venv/bin/python bench/bench_hash_store.py --label previous

Writes its section of docs/benchmarks.md (with ``--label`` other than ``current``,
only prints the row, for a table compared by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import Report
from services.hash.config import IndexConfig, StorageConfig
from services.hash.store import HashStore

BITS = 128

REOPEN = """
import gc, json, sys, time
from services.hash.config import IndexConfig, StorageConfig
from services.hash.store import HashStore

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("RssAnon:"))

store = HashStore(StorageConfig(data_dir=sys.argv[1]), IndexConfig())
gc.collect()
before = rss()
start = time.perf_counter()
store.recover()
seconds = time.perf_counter() - start
gc.collect()
items = sum(len(c) for c in store.collections.values())
print(json.dumps({"seconds": seconds, "rss": rss() - before, "items": items}))
"""


INDEX_ONLY = (
    "\n"
    "import gc, sys, time\n"
    "import numpy as np\n"
    "from services.hash.collection import Collection\n"
    "from services.hash.config import IndexConfig\n"
    "\n"
    "def rss():\n"
    '    with open("/proc/self/status") as fh:\n'
    "        return next(int(l.split()[1]) * 1024 for l in fh if "
    'l.startswith("RssAnon:"))\n'
    "\n"
    "items = int(sys.argv[1])\n"
    'coll = Collection("bench", 1, 128, "itq", IndexConfig())\n'
    "gc.collect()\n"
    "before = rss()\n"
    "start = time.perf_counter()\n"
    "for first in range(0, items, 1_000_000):\n"
    "    count = min(1_000_000, items - first)\n"
    "    codes = np.random.default_rng(first).integers(0, 256, (count, 16), "
    "dtype=np.uint8)\n"
    "    coll.add(np.arange(first, first + count, dtype=np.int64), codes)\n"
    "    del codes\n"
    "gc.collect()\n"
    'print(f"in-memory index alone, {items:,} items: {(rss() - before) / items:.1f} B/item '
    '(anonymous RSS) "\n'
    '      f"({len(coll):,} indexed, IVF {coll.approximate}, {time.perf_counter() - '
    'start:.0f} s)")\n'
)


def codes_for(start: int, count: int) -> np.ndarray:
    return np.random.default_rng(start).integers(0, 256, (count, BITS // 8), dtype=np.uint8)


async def durable_adds(directory: Path, count: int, concurrency: int) -> float:
    store = HashStore(StorageConfig(data_dir=str(directory)), IndexConfig())
    await store.start()
    codes = codes_for(concurrency, count)
    todo = iter(range(count))

    async def caller() -> None:
        for i in todo:
            await store.add("bench", f"video-{i}", codes[i], BITS, "itq")

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    rate = count / (time.perf_counter() - start)
    await store.close()
    return rate


async def fill(directory: Path, items: int, in_flight: int = 4096) -> float:
    store = HashStore(StorageConfig(data_dir=str(directory)), IndexConfig())
    await store.start()
    start = time.perf_counter()
    for first in range(0, items, in_flight):
        count = min(in_flight, items - first)
        codes = codes_for(first, count)
        await asyncio.gather(
            *(store.add("bench", f"video-{first + i}", codes[i], BITS, "itq") for i in range(count))
        )
    rate = items / (time.perf_counter() - start)
    await store.close()
    return rate


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--adds", type=int, default=5000, help="Adds per throughput run")
    parser.add_argument("--label", default="current", help="name of the row")
    parser.add_argument(
        "--dir", default=".", help="where the temporary stores go (the disk measured)"
    )
    parser.add_argument(
        "--index-items",
        type=int,
        default=0,
        help="only measure the in-memory index (labels + codes) at this many items, e.g. 10000000",
    )
    args = parser.parse_args()
    if args.index_items:
        subprocess.run([sys.executable, "-c", INDEX_ONLY, str(args.index_items)], check=True)
        return
    report = Report("hash-store", "Hash store: durable writes, restart, memory per item")
    rates = []
    for concurrency in (1, 16):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rates.append(asyncio.run(durable_adds(Path(tmp), args.adds, concurrency)))
    work = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        fill_rate = asyncio.run(fill(work, args.items))
        on_disk = disk_bytes(work)
        reopened = subprocess.run(
            [sys.executable, "-c", REOPEN, str(work)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        )
        result = json.loads(reopened.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert result["items"] == args.items, result
    table = (
        "| store | durable adds/s, 1 caller | 16 callers | fill, 4096 in flight | "
        f"restart at {args.items:,} items | memory per item | disk per item |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {args.label} | {rates[0]:,.0f} | {rates[1]:,.0f} | {fill_rate:,.0f} | "
        f"{result['seconds']:.1f} s | {result['rss'] / args.items:.0f} B | "
        f"{on_disk / args.items:.0f} B |"
    )
    if args.label != "current":  # another checkout's store: a row to compare by hand
        print(table)
        return
    report.add(
        f"In-process `HashStore` (SQLite, WAL, `synchronous=FULL`), {BITS}-bit codes, string "
        f"ids; durable adds: {args.adds:,} Adds, each caller awaiting its Add before the next "
        "(group commit batches concurrent callers); restart: a fresh process opens the filled "
        "store (WAL frame check, `quick_check`, row CRCs, faiss rebuilt); memory: the anonymous "
        "resident memory the open store added; disk: the store's files."
    )
    report.add(table)
    report.write()


if __name__ == "__main__":
    main()
