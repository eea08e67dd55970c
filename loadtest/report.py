"""Aggregate call results into ghz's JSON report shape.

Field names and units follow ghz's ``--format json`` output: durations are
integer nanoseconds, histogram marks are seconds, latency statistics cover the
successful calls only (as ghz computes them) while ``count`` and ``rps`` cover
every call.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
HISTOGRAM_BUCKETS = 10


@dataclass(frozen=True)
class CallResult:
    latency_ns: int
    # ghz's status names (Go's codes.Code.String()): "OK", "Unavailable", ...
    code: str
    error: str = ""


def ghz_code_name(code: grpc.StatusCode) -> str:
    """grpc.StatusCode.RESOURCE_EXHAUSTED -> "ResourceExhausted" (Go's spelling, as ghz prints it)."""
    special = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
    return special.get(code) or "".join(part.capitalize() for part in code.name.split("_"))


def ghz_error_text(code_name: str, details: str) -> str:
    return f"rpc error: code = {code_name} desc = {details}"


def _nearest_rank(sorted_ns: list[int], pct: float) -> int:
    index = max(0, math.ceil(pct / 100 * len(sorted_ns)) - 1)
    return sorted_ns[min(index, len(sorted_ns) - 1)]


def build(
    name: str,
    results: list[CallResult],
    wall_ns: int,
    end_reason: str,
    options: dict[str, Any],
    started: datetime | None = None,
) -> dict[str, Any]:
    ok = sorted(r.latency_ns for r in results if r.code == "OK")
    report: dict[str, Any] = {
        "name": name,
        "endReason": end_reason,
        "options": options,
        "date": (started or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": len(results),
        "total": wall_ns,
        "average": int(sum(ok) / len(ok)) if ok else 0,
        "fastest": ok[0] if ok else 0,
        "slowest": ok[-1] if ok else 0,
        "rps": len(results) / (wall_ns / 1e9) if wall_ns > 0 else 0.0,
        "errorDistribution": dict(Counter(r.error for r in results if r.code != "OK")),
        "statusCodeDistribution": dict(Counter(r.code for r in results)),
        "latencyDistribution": [
            {"percentage": p, "latency": _nearest_rank(ok, p)} for p in PERCENTILES
        ]
        if ok
        else None,
        "histogram": _histogram(ok),
    }
    return report


def _histogram(ok: list[int]) -> list[dict[str, Any]] | None:
    if not ok:
        return None
    fastest, slowest = ok[0], ok[-1]
    width = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = (
        [fastest + width * i for i in range(1, HISTOGRAM_BUCKETS + 1)]
        if width > 0
        else [float(slowest)]
    )
    counts = [0] * len(marks)
    for latency in ok:
        index = min(int((latency - fastest) / width), len(marks) - 1) if width > 0 else 0
        counts[index] += 1
    return [
        {"mark": m / 1e9, "count": c, "frequency": c / len(ok)}
        for m, c in zip(marks, counts, strict=True)
    ]


def percentile_ns(report: dict[str, Any], pct: int) -> int | None:
    """A latency percentile from a ghz report (ours or ghz's own)."""
    for entry in report.get("latencyDistribution") or []:
        if int(entry["percentage"]) == pct:
            return int(entry["latency"])
    return None
