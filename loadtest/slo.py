"""SLO gate over ghz JSON reports (from ghz itself or from a k6 run, loadtest/k6run.py).

    python -m loadtest.slo report.json [more.json ...] [--slo loadtest/slo.json]

Prints one row per report (calls, rps, p50/p99, error rate, verdict) and exits
1 when any report breaches its thresholds: p99 latency (``p99_ms_max``), error
rate (``error_rate_max``, non-OK calls / all calls) and optionally throughput
(``min_rps``). A report with no calls at all is a breach, never a pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.report import percentile_ns

DEFAULT_SLO_FILE = Path(__file__).resolve().parent / "slo.json"


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    limit: float
    ok: bool


def thresholds_for(name: str, slo_doc: dict[str, Any]) -> dict[str, float]:
    return {**slo_doc.get("defaults", {}), **slo_doc.get("slo", {}).get(name, {})}


def error_rate(report: dict[str, Any]) -> float:
    count = int(report.get("count") or 0)
    if count == 0:
        return 1.0
    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
    return (count - ok) / count


def evaluate(report: dict[str, Any], limits: dict[str, float]) -> list[Check]:
    checks = [Check("calls", float(report.get("count") or 0), 1, bool(report.get("count")))]
    if "p99_ms_max" in limits:
        p99 = percentile_ns(report, 99)
        value = p99 / 1e6 if p99 is not None else float("inf")
        checks.append(Check("p99_ms", value, limits["p99_ms_max"], value <= limits["p99_ms_max"]))
    if "error_rate_max" in limits:
        rate = error_rate(report)
        checks.append(
            Check("error_rate", rate, limits["error_rate_max"], rate <= limits["error_rate_max"])
        )
    if "min_rps" in limits:
        rps = float(report.get("rps") or 0.0)
        checks.append(Check("rps", rps, limits["min_rps"], rps >= limits["min_rps"]))
    return checks


def _ms(report: dict[str, Any], pct: int) -> str:
    value = percentile_ns(report, pct)
    return f"{value / 1e6:.1f}" if value is not None else "-"


def table(rows: list[tuple[dict[str, Any], list[Check]]]) -> str:
    header = (
        f"{'test':<24} {'calls':>7} {'rps':>8} {'p50 ms':>9} {'p99 ms':>9} {'p99 SLO':>8} "
        f"{'errors':>7} {'err SLO':>7}  verdict"
    )
    lines = [header, "-" * len(header)]
    for rep, checks in rows:
        by = {c.metric: c for c in checks}
        p99_limit = f"{by['p99_ms'].limit:.0f}" if "p99_ms" in by else "-"
        err_limit = f"{by['error_rate'].limit:.1%}" if "error_rate" in by else "-"
        failed = [c.metric for c in checks if not c.ok]
        verdict = "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"
        lines.append(
            f"{str(rep.get('name', '?')):<24} {int(rep.get('count') or 0):>7} "
            f"{float(rep.get('rps') or 0):>8.1f} "
            f"{_ms(rep, 50):>9} {_ms(rep, 99):>9} {p99_limit:>8} "
            f"{error_rate(rep):>7.1%} {err_limit:>7}  {verdict}"
        )
    return "\n".join(lines)


def check_reports(reports: list[dict[str, Any]], slo_doc: dict[str, Any]) -> tuple[bool, str]:
    rows = [
        (rep, evaluate(rep, thresholds_for(str(rep.get("name", "")), slo_doc))) for rep in reports
    ]
    return all(c.ok for _, checks in rows for c in checks), table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.slo", description="Check ghz JSON reports against SLOs."
    )
    parser.add_argument("reports", nargs="+", help="ghz JSON report files")
    parser.add_argument(
        "--slo", default=str(DEFAULT_SLO_FILE), help="thresholds file (default: loadtest/slo.json)"
    )
    args = parser.parse_args(argv)
    slo_doc = json.loads(Path(args.slo).read_text())
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    ok, text = check_reports(reports, slo_doc)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
