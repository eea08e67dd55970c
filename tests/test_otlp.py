"""Traces leave the process: one trace from a client through the gateway to every service.

A real OTLP/gRPC receiver (tests/otlp_support.py, the OTLP TraceService from
``opentelemetry-proto`` bound to 127.0.0.1) runs in its own process; the mesh runs
with ``server.trace_exporter: otlp`` pointing at it, and a traced client in a third
process makes one Analyze call. Every process exports its spans over OTLP/gRPC;
the test rebuilds the tree and checks the parent/child links. Marked ``infra``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from services.common.net import free_port
from visionmesh import features
from visionmesh.mesh import LocalMesh

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "otlp_support.py"
SERVER, CLIENT = 2, 3  # OTLP SpanKind values


def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.infra
@pytest.mark.timeout(420)
def test_one_trace_spans_client_gateway_and_every_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = tmp_path / "spans.jsonl"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    receiver = subprocess.Popen(
        [sys.executable, str(SUPPORT), "receive", str(port), str(received)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    services = [spec.service for spec in features.all_features()]
    monkeypatch.setenv("VISIONMESH_SERVER__TRACE_EXPORTER", "otlp")
    monkeypatch.setenv("VISIONMESH_SERVER__OTLP__ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("VISIONMESH_SERVER__OTLP__INSECURE", "true")
    monkeypatch.setenv("VISIONMESH_SERVER__OTLP__FLUSH_INTERVAL_S", "0.2")
    mesh = LocalMesh(services=services, log_dir=tmp_path / "logs")
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "receiving"
        gateway = mesh.start(timeout_s=240)
        assert not mesh.failed, mesh.failed
        out = subprocess.run(
            [
                sys.executable,
                str(SUPPORT),
                "analyze",
                gateway,
                str(ROOT / "samples" / "astronaut.jpg"),
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[-1])["errors"] == 0, out.stdout
        # The client flushed at exit; the services flush every 0.2 s.
        (root,) = [s for s in spans_of(received) if s["name"] == "client analyze"]
        trace_id = root["trace_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            spans = [s for s in spans_of(received) if s["trace_id"] == trace_id]
            if {s["service"] for s in spans if s["kind"] == SERVER} >= {"gateway", *services}:
                break
            time.sleep(0.2)
    finally:
        mesh.stop()
        receiver.terminate()
        receiver.wait(15)
    by_id = {s["span_id"]: s for s in spans}
    assert root["parent_span_id"] == ""

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_span_id"]]

    # client root -> client's gRPC span -> the gateway's server span.
    (gateway_server,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == SERVER]
    assert gateway_server["name"] == "/visionmesh.v1.GatewayService/Analyze"
    client_call = parent(gateway_server)
    assert (client_call["service"], client_call["kind"]) == ("client", CLIENT)
    assert parent(client_call) == root
    # Every service's server span is a child of a gateway client span under the gateway's server
    # span.
    for name in services:
        server_spans = [s for s in spans if s["service"] == name and s["kind"] == SERVER]
        assert server_spans, f"no server span from {name}: {sorted({s['service'] for s in spans})}"
        for span in server_spans:
            call = parent(span)
            assert (call["service"], call["kind"], call["name"]) == (
                "gateway",
                CLIENT,
                span["name"],
            )
            ancestor = call
            while ancestor["span_id"] != gateway_server["span_id"]:
                assert ancestor["parent_span_id"], f"{span['name']} is not under the gateway's span"
                ancestor = parent(ancestor)
