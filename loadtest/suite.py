"""Run every load test briefly against a local mesh and print the SLO table.

    python -m loadtest.suite --up --duration 5s          # what `make loadtest` runs
    python -m loadtest.suite --duration 30s              # against a mesh already up on the default ports

With ``--up`` the mesh (every service present plus the gateway) is started on
free loopback ports with ``visionmesh.mesh.LocalMesh`` - what ``visionmesh up``
runs - and stopped (SIGTERM, graceful drain) afterwards; each config's host is
pointed at the matching process. Reports are written to ``--reports``
(ghz's JSON shape). Exit status 1 when any SLO is breached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import ghzconfig, runner, slo

HERE = Path(__file__).resolve().parent
# gRPC service (from a config's call) -> mesh process name.
SERVICE_PROCESS = {
    "GatewayService": "gateway",
    "ClassifyService": "classify",
    "OcrService": "ocr",
    "FaceService": "face",
    "HashService": "hash",
}


def config_files(only: list[str]) -> list[Path]:
    files = sorted(p for p in HERE.glob("*.json") if p.name != "slo.json")
    return [p for p in files if not only or p.stem in only]


def run_suite(
    files: list[Path],
    addresses: dict[str, str] | None,
    duration: str,
    processes: int | None,
    reports_dir: Path,
) -> list[dict[str, Any]]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for path in files:
        raw = json.loads(path.read_text())
        process = SERVICE_PROCESS[raw["call"].split(".")[-2]]
        overrides: dict[str, Any] = {"duration": duration}
        if addresses is not None:
            if process not in addresses:
                print(f"skip {path.name}: {process} is not running", flush=True)
                continue
            overrides["host"] = addresses[process]
        cfg = ghzconfig.load(path, overrides)
        print(f"running {path.name}: {cfg.call} on {cfg.host} for {duration} ...", flush=True)
        rep = runner.run(cfg, processes)
        (reports_dir / f"{path.stem}.report.json").write_text(json.dumps(rep, indent=2) + "\n")
        reports.append(rep)
    return reports


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
    parser.add_argument(
        "--processes", type=int, help="client processes per test (default: CPU count)"
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
        reports = run_suite(files, addresses, args.duration, args.processes, Path(args.reports))
    finally:
        if mesh is not None:
            mesh.stop()
            print("mesh stopped", flush=True)
    ok, table = slo.check_reports(reports, json.loads(Path(args.slo).read_text()))
    print()
    print(table)
    print(f"\nreports in {args.reports}/; SLOs from {args.slo}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
