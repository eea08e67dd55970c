"""Load-test configs, the Python ghz-compatible runner, and the SLO gate.

The end-to-end tests drive the real classify service (real model, real
photo) in-process on a free loopback port with short, bounded runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import ghzconfig, report, runner, slo
from loadtest.report import CallResult
from services.classify.main import DEFINITION as CLASSIFY
from tests.support import running_service

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "loadtest").glob("*.json"))
CONFIGS = [p for p in CONFIGS if p.name != "slo.json"]
# Every key the configs use must be one ghz reads (runner/config.go + cmd/ghz).
GHZ_KEYS = {
    "name",
    "proto",
    "protoset",
    "import-paths",
    "call",
    "host",
    "insecure",
    "timeout",
    "connections",
    "concurrency",
    "total",
    "duration",
    "rps",
    "load-schedule",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
    "data",
    "binary-file",
    "metadata",
    "tags",
}
SERVICE_PORTS = {
    "GatewayService": 50050,
    "ClassifyService": 50051,
    "OcrService": 50052,
    "FaceService": 50053,
    "HashService": 50054,
    "DetectionService": 50055,
}
SLO_DOC = json.loads((ROOT / "loadtest" / "slo.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_ghz_shaped_and_builds_real_requests(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert set(raw) <= GHZ_KEYS, set(raw) - GHZ_KEYS
    assert raw["insecure"] is True and (ROOT / raw["import-paths"][0] / raw["proto"]).is_file()
    service = raw["call"].split(".")[-2]
    assert raw["host"] == f"127.0.0.1:{SERVICE_PORTS[service]}"
    cfg = ghzconfig.load(path)
    payloads = runner.requests_of(cfg)
    request_cls, _ = runner.message_classes(cfg.full_method)
    request = request_cls.FromString(payloads[0])
    # Every image in the request is a real JPEG (from scikit-image's samples).
    jpegs = [v for v in _bytes_fields(request) if v]
    assert jpegs and all(j[:3] == b"\xff\xd8\xff" for j in jpegs)
    assert raw["name"] in SLO_DOC["slo"], f"no SLO for {raw['name']}"


def _bytes_fields(message: Any) -> list[bytes]:
    out: list[bytes] = []
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for v in values:
            if isinstance(v, bytes):
                out.append(v)
            elif hasattr(v, "ListFields"):
                out.extend(_bytes_fields(v))
    return out


@pytest.mark.parametrize(
    "host", ["10.0.0.1:50051", "8.8.8.8:53", "0.0.0.0:50051", "example.invalid:1", "nohostport"]
)
def test_refuses_targets_off_loopback(host: str) -> None:
    with pytest.raises(ghzconfig.ConfigError):
        ghzconfig.from_dict({"call": "visionmesh.v1.ClassifyService.Classify", "host": host})


def test_accepts_loopback_names() -> None:
    for host in ("127.0.0.1:1", "localhost:1", "[::1]:1"):
        ghzconfig.require_loopback(host)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"total": 10**9}, "total"),
        ({"duration": "2h"}, "duration"),
        ({"concurrency": 100_000}, "concurrency"),
        ({"load-schedule": "exp"}, "load-schedule"),
    ],
)
def test_runs_are_bounded(override: dict[str, Any], message: str) -> None:
    base = {"call": "visionmesh.v1.ClassifyService.Classify", "host": "127.0.0.1:1"}
    with pytest.raises(ghzconfig.ConfigError, match=message):
        ghzconfig.from_dict({**base, **override})


def test_schedules_and_durations() -> None:
    assert ghzconfig.parse_duration("1m30s") == 90 and ghzconfig.parse_duration("250ms") == 0.25
    with pytest.raises(ghzconfig.ConfigError):
        ghzconfig.parse_duration("ten seconds")
    step = ghzconfig.from_dict(
        json.loads((ROOT / "loadtest" / "gateway_analyze.json").read_text())
    ).schedule
    assert [step.rate_at(t) for t in (0, 9.9, 10, 25, 100)] == [1, 1, 2, 3, 4]
    line = ghzconfig.LoadSchedule(kind="line", start=1, step=0.5, end=3)
    assert [line.rate_at(t) for t in (0, 2, 10)] == [1, 2, 3]
    # ghz semantics: a duration wins over a total.
    cfg = ghzconfig.from_dict(
        {"call": "a.B.C", "host": "127.0.0.1:1", "total": 5, "duration": "3s"}
    )
    assert (cfg.total, cfg.duration_s) == (None, 3.0)


def test_report_has_ghz_shape_and_statistics() -> None:
    results = [CallResult(ms * 1_000_000, "OK") for ms in range(1, 101)] + [
        CallResult(5, "Unavailable", "rpc error: code = Unavailable desc = down")
    ] * 2
    rep = report.build("x", results, 2_000_000_000, "normal", {})
    assert rep["count"] == 102 and rep["rps"] == pytest.approx(51.0)
    assert (rep["fastest"], rep["slowest"]) == (1_000_000, 100_000_000)
    assert rep["average"] == 50_500_000
    assert (
        report.percentile_ns(rep, 50) == 50_000_000 and report.percentile_ns(rep, 99) == 99_000_000
    )
    assert rep["statusCodeDistribution"] == {"OK": 100, "Unavailable": 2}
    assert rep["errorDistribution"] == {"rpc error: code = Unavailable desc = down": 2}
    assert sum(b["count"] for b in rep["histogram"]) == 100
    import grpc

    assert report.ghz_code_name(grpc.StatusCode.RESOURCE_EXHAUSTED) == "ResourceExhausted"
    assert report.ghz_code_name(grpc.StatusCode.CANCELLED) == "Canceled"


def _ghz_report(count: int, ok: int, p99_ms: float) -> dict[str, Any]:
    # The shape ghz itself writes with --format json (durations in ns).
    return {
        "name": "classify",
        "count": count,
        "total": 10**9,
        "average": 10**6,
        "fastest": 10**6,
        "slowest": int(p99_ms * 1e6),
        "rps": float(count),
        "statusCodeDistribution": {"OK": ok, **({"Unavailable": count - ok} if count > ok else {})},
        "errorDistribution": {"rpc error: code = Unavailable desc = x": count - ok}
        if count > ok
        else {},
        "latencyDistribution": [
            {"percentage": p, "latency": int(p99_ms * 1e6 * p / 99)} for p in report.PERCENTILES
        ],
    }


def test_slo_gate_verdicts(tmp_path: Path) -> None:
    limits = slo.thresholds_for("classify", SLO_DOC)
    assert all(c.ok for c in slo.evaluate(_ghz_report(100, 100, 20), limits))
    failed = {c.metric for c in slo.evaluate(_ghz_report(100, 90, 5000), limits) if not c.ok}
    assert failed == {"p99_ms", "error_rate"}
    assert not all(
        c.ok for c in slo.evaluate(_ghz_report(0, 0, 0) | {"latencyDistribution": None}, limits)
    )
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_ghz_report(100, 100, 20)))
    bad.write_text(json.dumps(_ghz_report(100, 100, 5000)))

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadtest.slo", *map(str, files)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    passed = run(good)
    assert passed.returncode == 0 and "PASS" in passed.stdout
    breached = run(good, bad)
    assert breached.returncode == 1 and "FAIL (p99_ms)" in breached.stdout


async def test_runner_against_the_real_classify_service() -> None:
    async with running_service(CLASSIFY) as server:
        cfg = ghzconfig.load(
            ROOT / "loadtest" / "classify.json",
            {"host": server.address, "total": 24, "duration": "", "concurrency": 4, "rps": 0},
        )
        rep = await asyncio.to_thread(runner.run, cfg, 2)
        # Bad input is counted the way ghz counts it: by status code and error text.
        bad = ghzconfig.from_dict(
            {
                "name": "bad",
                "call": cfg.call,
                "host": server.address,
                "total": 4,
                "concurrency": 2,
                "data": {"image": {"encoded": base64.b64encode(b"not an image").decode()}},
            }
        )
        bad_rep = await asyncio.to_thread(runner.run, bad, 1)
    assert rep["count"] == 24 and rep["statusCodeDistribution"] == {"OK": 24}, rep[
        "errorDistribution"
    ]
    assert (
        0
        < rep["fastest"]
        <= report.percentile_ns(rep, 50)
        <= report.percentile_ns(rep, 99)
        <= rep["slowest"]
    )
    assert rep["rps"] > 0 and rep["endReason"] == "normal"
    ok, text = slo.check_reports([rep], SLO_DOC)
    assert "classify" in text and ("PASS" in text) == ok
    assert bad_rep["statusCodeDistribution"] == {"InvalidArgument": 4}
    assert all(
        k.startswith("rpc error: code = InvalidArgument desc = ")
        for k in bad_rep["errorDistribution"]
    )
    assert not slo.check_reports([bad_rep | {"name": "classify"}], SLO_DOC)[0]


async def test_runner_duration_and_rate_are_honoured() -> None:
    async with running_service(CLASSIFY) as server:
        cfg = ghzconfig.load(
            ROOT / "loadtest" / "classify.json",
            {"host": server.address, "duration": "2s", "rps": 10, "concurrency": 4},
        )
        rep = await asyncio.to_thread(runner.run, cfg, 2)
    assert rep["endReason"] == "timeout"
    # 10 rps for 2 s offers 20 calls: never more (plus the in-flight ones at the end);
    # fewer only when the shared machine is too busy to serve them in time.
    assert 1 <= rep["count"] <= 20 + 4, rep["count"]
    # The schedule itself is exact: slots 0.1 s apart at 10 rps.
    pacer = runner.Pacer(ghzconfig.LoadSchedule(rps=10), 1.0, start=0.0)
    slots = []
    for _ in range(3):
        slots.append(pacer.next_slot)
        await pacer.wait_turn()
    assert slots == pytest.approx([0.0, 0.1, 0.2])


def test_runner_cli_writes_a_report_for_an_unreachable_target(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "loadtest.runner",
        "loadtest/classify.json",
        "--host",
        f"127.0.0.1:{port}",
        "--total",
        "6",
        "--concurrency",
        "2",
        "--processes",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rep = json.loads(out.read_text())
    assert rep["count"] == 6 and rep["statusCodeDistribution"] == {"Unavailable": 6}
    refused = subprocess.run(
        [*cmd[:4], "--host", "10.1.2.3:50051"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "non-loopback" in refused.stderr


async def test_suite_points_configs_at_running_processes(tmp_path: Path) -> None:
    from loadtest import suite

    files = suite.config_files(["classify", "ocr"])
    assert [p.name for p in files] == ["classify.json", "ocr.json"]
    async with running_service(CLASSIFY) as server:
        # ocr is "not running": skipped, not failed; classify runs against the live address.
        reports = await asyncio.to_thread(
            suite.run_suite, files, {"classify": server.address}, "1s", 1, tmp_path
        )
    assert [r["name"] for r in reports] == ["classify"]
    assert reports[0]["count"] > 0 and reports[0]["options"]["host"] == server.address
    assert (
        json.loads((tmp_path / "classify.report.json").read_text())["count"] == reports[0]["count"]
    )
