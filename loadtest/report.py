"""ghz's JSON report shape: the fields the SLO gate reads.

Reports come from ghz itself (``--format json``) or from a k6 run converted by
``loadtest/k6run.py``. Durations are integer nanoseconds; ``latencyDistribution``
lists ``{"percentage": p, "latency": ns}`` entries.
"""

from __future__ import annotations

from typing import Any

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


def percentile_ns(report: dict[str, Any], pct: int) -> int | None:
    """A latency percentile from a ghz report (ghz's own or a converted k6 run)."""
    for entry in report.get("latencyDistribution") or []:
        if int(entry["percentage"]) == pct:
            return int(entry["latency"])
    return None
