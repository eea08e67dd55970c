"""Small helpers shared by the benchmarks: timing statistics, the machine, the figures file.

docs/benchmarks.md is made of sections, each between ``<!-- bench:KEY -->`` and
``<!-- /bench:KEY -->`` markers and written only by the benchmark that owns KEY
(``write_section``); the text outside the markers is the file's own.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from pathlib import Path

import numpy as np

# BENCH_DOC sends the sections elsewhere (bench.run_all's quick runs write to var/bench/).
DOC = Path(
    os.environ.get("BENCH_DOC") or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
)
INTRO = (
    "# Benchmarks\n\n"
    "Each section below is written by the benchmark named in it (`make bench` runs them;\n"
    "see `bench/run_all.py`); re-run its command to refresh it. Nothing between a section's\n"
    "markers is edited by hand.\n"
)


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s) * 1000
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    return f"{cpu_model()}, {cores} cores, Python {platform.python_version()}"


def section_key(title: str) -> str:
    """The marker key of a section titled ``title`` (lower-case words joined by dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def write_section(title: str, body: str, key: str | None = None) -> None:
    """Replace (or append) the section ``key`` (default: from ``title``) of docs/benchmarks.md."""
    key = key or section_key(title)
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else INTRO
    section = f"{begin}\n## {title}\n\n{body.strip()}\n{end}\n"
    marked = re.compile(rf"{re.escape(begin)}\n.*?{re.escape(end)}\n?", re.S)
    legacy = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |^<!-- bench:|\Z)", re.S | re.M)
    if marked.search(text):
        text = marked.sub(lambda _: section, text)
    elif legacy.search(text):
        text = legacy.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.write_text(text)
