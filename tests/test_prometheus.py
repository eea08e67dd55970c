"""A real Prometheus scrapes a running mesh; the shipped rules pass promtool.

The mesh runs classify and hash (ocr and face are left out on purpose, so the
gateway records feature errors for them). Prometheus (Debian package
``prometheus``, tools/apt-packages.txt) scrapes every process's ``--metrics-port``
each second and evaluates monitoring/rules.yaml; the test asks its HTTP API with
PromQL for the series an operator watches. Marked ``infra`` (``--run-infra``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from services.common.net import free_port
from visionmesh.mesh import LocalMesh
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "rules.yaml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(ROOT / "monitoring" / "rules_test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    from monitoring import prometheusrule

    assert prometheusrule.main(["--check"]) == 0
    rule = yaml.safe_load(prometheusrule.TARGET.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "VisionMeshErrorRatioHigh",
        "VisionMeshLatencySLOBurn",
        "VisionMeshQueueSaturated",
        "VisionMeshCircuitBreakerOpen",
    } <= alerts


def query(api: str, promql: str) -> list[dict[str, Any]]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def wait_for(api: str, promql: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(api, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.infra
@pytest.mark.timeout(420)
def test_prometheus_scrapes_the_mesh_and_evaluates_the_rules(tmp_path: Path) -> None:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    names = ["classify", "hash", "gateway"]
    metrics_ports = {name: free_port() for name in names}
    mesh = LocalMesh(
        services=["classify", "hash"],
        log_dir=tmp_path / "logs",
        extra_args={n: ["--metrics-port", str(p)] for n, p in metrics_ports.items()},
    )
    web_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "visionmesh",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{p}"], "labels": {"pod": n}}
                    for n, p in metrics_ports.items()
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    gateway = mesh.start(timeout_s=240)
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            "--log.level=warn",
        ],
        stdout=(tmp_path / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{web_port}"
    try:
        photo = (ROOT / "samples" / "chelsea.jpg").read_bytes()
        request = gateway_pb2.AnalyzeRequest(
            image=common_pb2.Image(encoded=photo),
            features=[common_pb2.FEATURE_CLASSIFY, common_pb2.FEATURE_HASH, common_pb2.FEATURE_OCR],
        )
        with grpc.insecure_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            for _ in range(4):  # answers with a feature error are never cached: 4 misses
                reply = stub.Analyze(request, timeout=60)
                assert reply.HasField("classify") and reply.HasField("hash")
                assert [e.feature for e in reply.errors] == [common_pb2.FEATURE_OCR]
            del request.features[-1]
            for _ in range(3):  # complete answers: a miss, then two hits
                reply = stub.Analyze(request, timeout=60)
                assert not reply.errors
        up = wait_for(api, "up == 1")
        deadline = time.monotonic() + 60
        while len(up) < len(names) and time.monotonic() < deadline:
            time.sleep(0.5)
            up = query(api, "up == 1")
        assert {r["metric"]["pod"] for r in up} == set(names), up
        # RPC latency: per service, from the histogram.
        latency = wait_for(
            api, "histogram_quantile(0.99, sum by (service, le) (visionmesh_rpc_seconds_bucket))"
        )
        by_service = {r["metric"]["service"]: float(r["value"][1]) for r in latency}
        assert {
            "visionmesh.v1.GatewayService",
            "visionmesh.v1.ClassifyService",
            "visionmesh.v1.HashService",
        } <= set(by_service), by_service
        assert all(0 < v <= 10 for v in by_service.values()), by_service
        # Batcher: batches formed with at least one item each, a queue-depth gauge per model.
        batches = wait_for(
            api,
            "sum by (model) (visionmesh_batcher_batch_size_sum)"
            " / sum by (model) (visionmesh_batcher_batch_size_count)",
        )
        assert {r["metric"]["model"] for r in batches} >= {"efficientnet_lite0", "open_nsfw"}
        assert all(float(r["value"][1]) >= 1 for r in batches)
        assert wait_for(api, 'visionmesh_batcher_queue_depth{model="efficientnet_lite0"}')
        assert wait_for(api, "visionmesh_batcher_queue_seconds_count > 0")
        # Feature errors: ocr is not running; the gateway counted every failed fan-out.
        errors = wait_for(api, 'visionmesh_gateway_feature_errors_total{feature="FEATURE_OCR"}')
        assert sum(float(r["value"][1]) for r in errors) == 4, errors
        # Cache: five misses, two hits.
        cache = {
            r["metric"]["result"]: float(r["value"][1])
            for r in wait_for(api, "visionmesh_gateway_cache_total")
        }
        assert cache.get("miss") == 5 and cache.get("hit") == 2, cache
        # The shipped recording rules evaluate against real series.
        assert wait_for(api, "visionmesh:batcher_batch_size:mean_5m", timeout_s=30)
        assert wait_for(api, "visionmesh:rpc_seconds:p99_5m", timeout_s=30)
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
        mesh.stop()
