"""The `make loadtest` SLO run, written to docs/benchmarks.md.

    .venv/bin/python -m bench.bench_loadtest [--duration 5s]

Brings the mesh up on free loopback ports (``visionmesh.mesh.LocalMesh``), runs
every ``loadtest/*.json`` config for ``--duration`` through k6
(``loadtest.suite.run_suite``, what `make loadtest` runs), checks the SLOs of ``loadtest/slo.json``
and
writes the table. These are SLO checks at the configs' modest rates, not
capacity figures; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.harness import Report
from loadtest import slo
from loadtest.suite import config_files, run_suite
from visionmesh.mesh import LocalMesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="5s")
    args = parser.parse_args()
    report = Report("loadtest", "Load tests: `make loadtest` SLO run")
    files = config_files([])
    work = Path(tempfile.mkdtemp(prefix="bench-loadtest-"))
    mesh = LocalMesh(fixed_ports=False, log_dir=work / "logs")
    try:
        mesh.start()
        addresses = {name: proc.address for name, proc in mesh.processes.items()}
        reports, _ = run_suite(
            files, addresses, args.duration, work / "reports", slo.DEFAULT_SLO_FILE
        )
    finally:
        mesh.stop()
    slo_doc = json.loads(slo.DEFAULT_SLO_FILE.read_text())
    rows = [
        "| test | calls | rps | p50 ms | p99 ms | p99 SLO ms | errors | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    breaches = 0
    for rep in reports:
        checks = slo.evaluate(rep, slo.thresholds_for(str(rep.get("name", "")), slo_doc))
        failed = [c.metric for c in checks if not c.ok]
        breaches += bool(failed)
        limit = next((f"{c.limit:.0f}" for c in checks if c.metric == "p99_ms"), "-")
        rows.append(
            f"| {rep.get('name', '?')} | {int(rep.get('count') or 0)} | "
            f"{float(rep.get('rps') or 0):.1f} | "
            f"{slo._ms(rep, 50)} | {slo._ms(rep, 99)} | {limit} | {slo.error_rate(rep):.1%} | "
            f"{'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'} |"
        )
    report.add(
        f"Each of the {len(files)} configs in `loadtest/` runs through k6 for "
        f"{args.duration} against a mesh "
        "on free loopback ports (every service and the gateway as separate processes); SLOs from "
        "`loadtest/slo.json`. Same as `make loadtest`."
    )
    report.add("\n".join(rows))
    report.add(f"{len(reports) - breaches} of {len(reports)} tests met their SLOs in this run.")
    report.write()


if __name__ == "__main__":
    main()
