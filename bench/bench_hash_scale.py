"""Scale of the near-duplicate index: 1M 128-bit codes in one collection.

Synthetic but shaped like a re-upload workload: 100k "originals" (random codes)
each with 10 near-duplicate variants (every bit flipped with p = 0.05, ~6 bits),
1M codes in all. Queries are fresh variants of random originals, so a query's
true 10 nearest neighbours are the 10 variants of its original. Measures: add
time (through ``Collection.add``, the path the store applies committed adds
with; the store's fsync cost is separate, see ``bench/bench_hash_store.py``), resident
memory per item, single and batched search latency of the IVF index at several ``nprobe``, and its
recall@10
against exact search (faiss ``IndexBinaryFlat``).

    .venv/bin/python -m bench.bench_hash_scale [--items 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import faiss
import numpy as np

from bench.harness import Goal, Report
from services.hash.collection import Collection
from services.hash.config import IndexConfig, StorageConfig
from services.hash.store import HashStore

BITS = 128
VARIANTS = 10
FLIP_P = 0.05


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def variants(bases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each base with every bit flipped independently with probability FLIP_P."""
    noise = np.packbits(rng.random((len(bases), BITS)) < FLIP_P, axis=1)
    return bases ^ noise


def make_codes(items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    bases = rng.integers(0, 256, (items // VARIANTS, BITS // 8), dtype=np.uint8)
    chunks = [variants(bases, rng) for _ in range(VARIANTS)]
    # Row r of chunk v is variant v of base r; interleave so an id's neighbours are not adjacent.
    return bases, np.concatenate(chunks)


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


async def durable_adds(count: int, concurrency: int) -> float:
    """Adds/s through HashStore (log append + fsync + apply, group commit) with ``concurrency``
    callers."""
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        store = HashStore(StorageConfig(data_dir=tmp), IndexConfig())
        await store.start()
        codes = np.random.default_rng(1).integers(0, 256, (count, BITS // 8), dtype=np.uint8)
        next_i = iter(range(count))

        async def writer() -> None:
            for i in next_i:
                await store.add("bench", f"id-{i}", codes[i], BITS, "itq")

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(concurrency)))
        rate = count / (time.perf_counter() - start)
        await store.close()
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--nlist", type=int, default=IndexConfig().nlist, help="IVF cells (default: the service's)"
    )
    args = parser.parse_args()
    report = Report("hash-scale", "Hash service: scale, 1M codes of 128 bits")
    faiss_threads = len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(faiss_threads)
    rng = np.random.default_rng(0)
    bases, codes = make_codes(args.items, rng)
    rss0 = rss_bytes()
    coll = Collection(
        "scale",
        1,
        BITS,
        "itq",
        IndexConfig(
            ivf_threshold=min(IndexConfig().ivf_threshold, args.items // 2), nlist=args.nlist
        ),
    )
    start = time.perf_counter()
    for s in range(0, len(codes), 10_000):
        coll.add(np.arange(s, min(s + 10_000, len(codes)), dtype=np.int64), codes[s : s + 10_000])
    add_s = time.perf_counter() - start
    per_item = (rss_bytes() - rss0) / len(codes)
    print(
        f"added {len(codes)} codes in {add_s:.1f}s ({add_s / len(codes) * 1e6:.1f} "
        f"us/item, IVF switch included); memory {per_item:.0f} B/item (RSS delta: the "
        "faiss index of codes and int64 labels; ids live in the store on disk)"
    )

    queries = variants(bases[rng.integers(0, len(bases), args.queries)], rng)
    exact = faiss.IndexBinaryFlat(BITS)
    exact.add(codes)
    start = time.perf_counter()
    _, truth = exact.search(queries, 10)
    flat_ms = (time.perf_counter() - start) / len(queries) * 1000
    single_exact = []
    for q in queries[:100]:
        t = time.perf_counter()
        exact.search(q[None], 10)
        single_exact.append(time.perf_counter() - t)
    print(
        f"exact IndexBinaryFlat over all {len(codes)}: single p50 "
        f"{percentiles(single_exact)[0]:.2f} ms, batched {flat_ms:.2f} ms/query (2 "
        "threads)"
    )

    index = coll.index
    nlist = int(index.nlist) if coll.approximate else 0
    default_nprobe = IndexConfig().nprobe
    rows = [
        f"| nprobe (of {nlist} cells) | single p50 ms | single p99 ms | batched (100) "
        "ms/query | recall@10 vs exact |",
        "|---:|---:|---:|---:|---:|",
    ]
    at_default: tuple[float, float] = (0.0, 0.0)
    for nprobe in (8, 16, 32, 64, 128):
        index.nprobe = nprobe
        single = []
        found = []
        for q in queries:
            t = time.perf_counter()
            _, labels = coll.search(q[None], 10)[0]
            single.append(time.perf_counter() - t)
            found.append({int(label) for label in labels})
        t = time.perf_counter()
        for s in range(0, len(queries), 100):
            coll.search(queries[s : s + 100], 10)
        batched_ms = (time.perf_counter() - t) / len(queries) * 1000
        recall = float(np.mean([len(f & set(truth[i].tolist())) / 10 for i, f in enumerate(found)]))
        p50, p99 = percentiles(single)
        label = f"**{nprobe} (service default)**" if nprobe == default_nprobe else str(nprobe)
        rows.append(f"| {label} | {p50:.3f} | {p99:.3f} | {batched_ms:.3f} | {recall:.3f} |")
        print(rows[-1])
        if nprobe == default_nprobe:
            at_default = (p50, recall)
    adds = {c: asyncio.run(durable_adds(2000, c)) for c in (1, 16)}
    exact_p50 = percentiles(single_exact)[0]
    report.add(
        f"Synthetic, shaped like re-uploads: {len(bases)} random originals x "
        f"{VARIANTS} variants each "
        f"(every bit flipped with p = {FLIP_P}), {len(codes)} codes in one collection; "
        f"{len(queries)} queries are fresh variants of random originals. The collection uses the "
        f"service's index settings (`IndexConfig()`: IVF switch at "
        f"{min(IndexConfig().ivf_threshold, args.items // 2)} items, nlist "
        f"{args.nlist or 'auto'} -> {nlist} cells); faiss on {faiss_threads} threads. Recall@10 is "
        "against exact search (`IndexBinaryFlat` over all codes). One pass, no comparison sides: "
        "the load average above is the context."
    )
    report.add(
        "| what | figure |\n|---|---|\n"
        f"| add {len(codes)} codes (`Collection.add`, batches of 10k, IVF switch included) | "
        f"{add_s:.1f} s ({add_s / len(codes) * 1e6:.1f} µs/item) |\n"
        "| memory per item (RSS delta: the faiss index of codes and int64 labels; ids "
        f"live in the store) | {per_item:.0f} B |\n"
        f"| exact `IndexBinaryFlat`: single query p50 / batched | {exact_p50:.2f} ms / "
        f"{flat_ms:.2f} ms per query |\n"
        f"| durable adds through the store (commit + fsync + apply), 1 / 16 callers | "
        f"{adds[1]:.0f} / {adds[16]:.0f} adds/s |"
    )
    report.add("\n".join(rows))
    report.add(
        Goal("<=", 1.0).sentence(
            f"single-query p50 at the default nprobe {default_nprobe} (ms)", at_default[0], "{:.3f}"
        )
        + " "
        + Goal(">=", 0.95).sentence("recall@10 at the same nprobe", at_default[1], "{:.3f}")
        + " Exact single-query search p50 is "
        f"{exact_p50 / max(at_default[0], 1e-9):.0f}x the IVF's."
    )
    report.write()


if __name__ == "__main__":
    main()
