"""Run the benchmarks and regenerate docs/benchmarks.md: what `make bench` runs.

    .venv/bin/python -m bench.run_all                    # every benchmark, full settings
    .venv/bin/python -m bench.run_all --only classify ocr
    .venv/bin/python -m bench.run_all --quick            # short settings, writes
    var/bench/benchmarks-quick.md
    make bench [BENCH=all|quick|name,name]

Each benchmark runs in its own process (``python -m bench.<module> <args>``), one
after the other, so thread pools and memory of one never weigh on the next; each
writes its own marked section of the figures file. ``--quick`` runs the quick
subset (entries with quick arguments) with short settings and writes to a
scratch copy instead of docs/benchmarks.md, so a smoke run never replaces the
published figures. A module not present in this checkout is reported and
skipped. Adding a benchmark is one line in ``BENCHES``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import DOC

ROOT = Path(__file__).resolve().parent.parent
# A benchmark exits with this when its rounds disagreed and it wrote no figures (bench/harness.py).
REFUSED = 3
QUICK_DOC = ROOT / "var" / "bench" / "benchmarks-quick.md"


@dataclass(frozen=True)
class Bench:
    name: str  # what --only / BENCH= take
    module: str  # run as `python -m bench.<module> <args>`
    args: tuple[str, ...] = ()  # full settings: what docs/benchmarks.md is made with
    quick: tuple[str, ...] | None = (
        None  # short settings for --quick; None = not in the quick subset
    )


# In the order of the sections of docs/benchmarks.md.
BENCHES: tuple[Bench, ...] = (
    Bench("classify", "bench_classify", ("--seconds", "4", "--rounds", "5"),
          ("--seconds", "1", "--rounds", "2")),
    Bench("spine", "bench_spine", ("--seconds", "4", "--rounds", "5"),
          ("--seconds", "1", "--rounds", "2", "--requests", "20")),
    Bench("peers", "bench_peers", ("--rounds", "3", "--seconds", "3", "--gateway-calls", "3")),
    Bench("overhead", "bench_overhead", ("--rounds", "4", "--calls", "20", "--video-runs", "3")),
    Bench("face", "bench_face"),
    Bench("face-stages", "bench_face", ("--stages",)),
    Bench("detect", "bench_detect"),
    Bench("pose", "bench_pose"),
    Bench("video", "bench_video", ("--runs", "7"), ("--runs", "2", "--seconds", "4")),
    Bench("gateway", "bench_gateway", ("--rounds", "5"), ("--rounds", "2")),
    Bench("ocr", "bench_ocr", ("--rounds", "5"), ("--rounds", "2", "--images", "4")),
    Bench("ocr-accuracy", "bench_ocr", ("--accuracy",), ("--accuracy", "--lines", "32")),
    Bench("hash-copydetect", "bench_hash_copydetect"),
    Bench("hash-scale", "bench_hash_scale", (), ("--items", "100000", "--queries", "200")),
    Bench("hash-store", "bench_hash_store"),
    Bench("hash-copies", "bench_hash_copies", ("--items", "1000000", "--big", "0"),
          ("--items", "100000", "--big", "0")),
    Bench("hash-milvus", "bench_hash_milvus", ("--items", "100000", "--write"),
          ("--items", "10000", "--rounds", "2", "--queries", "50", "--write")),
    Bench("heldout", "bench_heldout", (), ("--quick",)),
    Bench("loadtest", "bench_loadtest", ("--duration", "5s"), ("--duration", "2s")),
    Bench("overload", "bench_overload", ("--seconds", "30", "--write")),
    Bench("soak", "bench_soak", ("--soak-seconds", "600", "--write")),
    Bench("gpu", "bench_gpu", ("--mode", "cpu", "--threads", "1", "--rounds", "5", "--write")),
)  # fmt: skip


def present(bench: Bench) -> bool:
    return importlib.util.find_spec(f"bench.{bench.module}") is not None


def select(only: list[str], quick: bool) -> list[Bench]:
    unknown = set(only) - {b.name for b in BENCHES}
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: "
            f"{', '.join(b.name for b in BENCHES)}"
        )
    chosen = [b for b in BENCHES if not only or b.name in only]
    return [b for b in chosen if not quick or b.quick is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="the quick subset, short settings, scratch file"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for b in BENCHES:
            state = "" if present(b) else "  (not in this checkout)"
            print(f"{b.name:16s} python -m bench.{b.module} {' '.join(b.args)}{state}")
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.quick:
        QUICK_DOC.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOC, QUICK_DOC)
        env["BENCH_DOC"] = str(QUICK_DOC)
    outcome: dict[str, str] = {}
    for bench in select(args.only, args.quick):
        if not present(bench):
            outcome[bench.name] = f"skipped: bench/{bench.module}.py is not in this checkout"
            print(f"== {bench.name}: {outcome[bench.name]}", flush=True)
            continue
        argv_ = [
            sys.executable,
            "-m",
            f"bench.{bench.module}",
            *(bench.quick if args.quick and bench.quick is not None else bench.args),
        ]
        print(f"== {bench.name}: {' '.join(argv_[1:])}", flush=True)
        start = time.monotonic()
        rc = subprocess.run(argv_, cwd=ROOT, env=env).returncode
        took = time.monotonic() - start
        status = {0: "ok", REFUSED: "figures refused (rounds disagreed; see its section)"}
        outcome[bench.name] = f"{status.get(rc, f'exit status {rc}')} in {took:.0f} s"
    print("\nbenchmarks:")
    for name, what in outcome.items():
        print(f"  {name:16s} {what}")
    print(f"figures in {QUICK_DOC if args.quick else DOC}")
    return (
        0
        if all(v.startswith(("ok", "skipped", "figures refused")) for v in outcome.values())
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
