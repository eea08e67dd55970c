"""Run every load test briefly with k6 against a local mesh and print the SLO table.

    python -m loadtest.suite --up --duration 5s          # what `make loadtest` runs
    python -m loadtest.suite --duration 30s              # against a mesh already up on the default
    ports

With ``--up`` the mesh (every service present plus the gateway) is started on
free loopback ports with ``visionmesh.mesh.LocalMesh`` - what ``visionmesh up``
runs - and stopped (SIGTERM, graceful drain) afterwards; each config's host is
pointed at the matching process. Each test runs loadtest/k6/<config>.js (k6 checks
the thresholds itself); reports are written to ``--reports`` (k6's summary and the
same figures in ghz's JSON shape). Exit status 1 when any SLO is breached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import k6run, slo
from visionmesh import features

HERE = Path(__file__).resolve().parent
# gRPC service (from a config's call) -> mesh process name: the gateway and every feature.
SERVICE_PROCESS = {
    "GatewayService": "gateway",
    **{spec.grpc_service: spec.service for spec in features.all_features()},
}


def config_files(only: list[str]) -> list[Path]:
    files = sorted(p for p in HERE.glob("*.json") if p.name != "slo.json")
    return [p for p in files if not only or p.stem in only]


def run_suite(
    files: list[Path],
    addresses: dict[str, str] | None,
    duration: str,
    reports_dir: Path,
    slo_file: Path | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Every config through k6; returns the reports and whether k6's own thresholds held."""
    reports, thresholds_held = [], True
    for path in files:
        raw = json.loads(path.read_text())
        process = SERVICE_PROCESS[raw["call"].split(".")[-2]]
        target = raw["host"]
        if addresses is not None:
            if process not in addresses:
                print(f"skip {path.name}: {process} is not running", flush=True)
                continue
            target = addresses[process]
        print(f"k6 {path.stem}: {raw['call']} on {target} for {duration} ...", flush=True)
        rep, status = k6run.run(path, target, duration, reports_dir, slo_file)
        if status not in (0, k6run.THRESHOLDS_FAILED):
            raise RuntimeError(f"k6 failed on {path.name} (exit {status})")
        thresholds_held &= status == 0
        reports.append(rep)
    return reports, thresholds_held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.suite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--up",
        action="store_true",
        help="start a local mesh on free ports for the run, stop it after",
    )
    parser.add_argument("--duration", default="5s", help="per test (default 5s)")
    parser.add_argument(
        "--only", nargs="*", default=[], help="config names (file stems), e.g. classify ocr"
    )
    parser.add_argument("--slo", default=str(slo.DEFAULT_SLO_FILE))
    parser.add_argument("--reports", default="var/loadtest", help="folder for the JSON reports")
    args = parser.parse_args(argv)
    files = config_files(args.only)
    if not files:
        print("loadtest: no configs selected", file=sys.stderr)
        return 2
    mesh = None
    addresses = None
    try:
        if args.up:
            from visionmesh.mesh import LocalMesh

            mesh = LocalMesh(fixed_ports=False)
            started = time.monotonic()
            print(f"starting mesh: {', '.join(mesh.services)} + gateway ...", flush=True)
            mesh.start()
            for name, reason in mesh.failed.items():
                print(f"warning: {name} did not start:\n{reason}", file=sys.stderr)
            addresses = {name: proc.address for name, proc in mesh.processes.items()}
            print(f"mesh up in {time.monotonic() - started:.0f}s: {addresses}", flush=True)
        reports, thresholds_held = run_suite(
            files, addresses, args.duration, Path(args.reports), Path(args.slo)
        )
    finally:
        if mesh is not None:
            mesh.stop()
            print("mesh stopped", flush=True)
    ok, table = slo.check_reports(reports, json.loads(Path(args.slo).read_text()))
    print()
    print(table)
    print(f"\nreports in {args.reports}/; SLOs from {args.slo}")
    if not thresholds_held:
        print("k6: thresholds breached (see the reports)", file=sys.stderr)
    return 0 if ok and thresholds_held else 1


if __name__ == "__main__":
    sys.exit(main())
