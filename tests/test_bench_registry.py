"""`make bench` runs every entry of bench/run_all.py: each entry's module and flags must exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run_all import BENCHES, Bench

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("bench", BENCHES, ids=lambda b: b.name)
def test_every_flag_is_one_the_bench_accepts(bench: Bench) -> None:
    source = (BENCH_DIR / f"{bench.module}.py").read_text()
    for args in (bench.args, bench.quick or ()):
        for flag in (a for a in args if a.startswith("--")):
            assert f'"{flag}"' in source, f"bench/{bench.module}.py has no {flag} option"
