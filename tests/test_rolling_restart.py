"""A rolling restart with zero failed calls: Kubernetes' maxUnavailable: 0 rollout on real
processes.

Two replicas of every feature service run behind one gateway, which balances
client-side, round-robin over static discovery (the same resolver machinery as
the DNS discovery the manifests use: one channel per instance, an instance
that refuses is retried elsewhere and its breaker opens). Steady load goes through
the gateway while every replica is restarted, one at a time, the way a pod is
replaced: SIGTERM -> NOT_SERVING for ``drain_delay_s`` while still serving ->
new calls refused, in-flight calls drained -> exit; the new process starts on the
same address, and the next replica is only touched once it is SERVING (readiness).

Asserts: 0 failed calls and 0 answers missing a feature over >= 200 calls that span
every restart. Marked ``infra`` (about 3-4 minutes on 2 cores).
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from PIL import Image

from services.common.net import free_port
from visionmesh import features, registry
from visionmesh.mesh import ROOT, ServiceProcess, stop_process, tail, wait_healthy
from visionmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

REPLICAS = 2
MIN_CALLS = 200
WORKERS = 3
# As in k8s/base/*/config.yaml (the preStop sleep has no counterpart with static
# discovery; the NOT_SERVING delay and the in-flight drain do).
DRAIN_DELAY_S = 3.0
DRAIN_GRACE_S = 20.0
# The manifests' minReadySeconds: a new replica counts as available only after serving
# this long. It must cover the gateway's breaker_reset_s (5 s): the breaker of the
# replica that was down stays open that long after its last refused call, and the
# sibling must not stop taking calls before it closes (tests/test_k8s.py checks it).
MIN_READY_S = 5.0


def spawn(name: str, port: int, log_dir: Path, extra: list[str]) -> ServiceProcess:
    log_path = log_dir / f"{name}-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        registry.service_modules()[name].rsplit(".", 1)[0],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--set",
        f"server.drain_delay_s={DRAIN_DELAY_S}",
        "--set",
        f"server.drain_grace_s={DRAIN_GRACE_S}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    return ServiceProcess(name, f"127.0.0.1:{port}", proc, log_path)


@dataclass
class Load:
    """Analyze calls in a few threads until stopped; every outcome counted."""

    gateway: str
    image: bytes
    features: list[int]
    calls: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self) -> None:
        names = {
            f: common_pb2.Feature.Name(f).removeprefix("FEATURE_").lower() for f in self.features
        }
        with grpc.insecure_channel(self.gateway) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_pb2.AnalyzeRequest(
                image=common_pb2.Image(encoded=self.image), features=self.features
            )
            while not self.stop.is_set():
                failure, missing = None, []
                try:
                    reply = stub.Analyze(request, timeout=30)
                    missing = [f"{names[e.feature]}: {e.code}" for e in reply.errors]
                    missing += [n for n in names.values() if not reply.HasField(n)]  # type: ignore[arg-type]
                except grpc.RpcError as exc:
                    failure = f"{exc.code().name}: {exc.details()}"
                with self.lock:
                    self.calls += 1
                    if failure:
                        self.failed[failure] += 1
                    for m in missing:
                        self.missing[m] += 1


@pytest.mark.infra
@pytest.mark.timeout(600)
def test_rolling_restart_of_every_replica_fails_no_call(tmp_path: Path) -> None:
    services = [spec.service for spec in features.all_features()]
    replicas: dict[str, list[ServiceProcess]] = {}
    gateway: ServiceProcess | None = None
    threads: list[threading.Thread] = []
    load: Load | None = None
    try:
        for name in services:
            replicas[name] = [
                spawn(name, free_port(), tmp_path, ["--engine-threads", "1"])
                for _ in range(REPLICAS)
            ]
        deadline = time.monotonic() + 300
        for proc in (p for procs in replicas.values() for p in procs):
            assert wait_healthy(proc, deadline), tail(proc.log_path)
        config = tmp_path / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "services": {
                        spec.name: [p.address for p in replicas[spec.service]]
                        for spec in features.all_features()
                    },
                    # Every call reaches the services (no cached answers).
                    "cache_max_bytes": 0,
                }
            )
        )
        gateway = spawn("gateway", free_port(), tmp_path, ["--config", str(config)])
        assert wait_healthy(gateway, time.monotonic() + 60), tail(gateway.log_path)

        photo = Image.open(ROOT / "samples" / "astronaut.jpg").convert("RGB")
        photo.thumbnail((256, 256))
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=90)
        wanted = [spec.enum for spec in features.all_features()]
        load = Load(gateway.address, buf.getvalue(), wanted)
        threads = [threading.Thread(target=load.worker, daemon=True) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        time.sleep(3)
        calls_before = load.calls
        assert calls_before > 0 and not load.failed and not load.missing, (
            load.failed,
            load.missing,
        )

        restarts = []
        for name in services:
            for i, old in enumerate(replicas[name]):
                t0 = time.monotonic()
                old.process.send_signal(signal.SIGTERM)  # what the kubelet sends after preStop
                old.process.wait(DRAIN_DELAY_S + DRAIN_GRACE_S + 15)
                port = int(old.address.rsplit(":", 1)[1])
                new = spawn(name, port, tmp_path, ["--engine-threads", "1"])
                replicas[name][i] = new
                assert wait_healthy(new, time.monotonic() + 180), tail(new.log_path)
                time.sleep(MIN_READY_S)
                restarts.append((f"{name}[{i}]", round(time.monotonic() - t0, 1), load.calls))
        restarted_at = load.calls
        # Keep the load on until the calls span the restarts and the minimum is reached.
        deadline = time.monotonic() + 180
        while (load.calls < MIN_CALLS or load.calls < restarted_at + 10) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
    finally:
        if load is not None:
            load.stop.set()
        for t in threads:
            t.join(40)
        if gateway is not None:
            stop_process(gateway)
        for proc in (p for procs in replicas.values() for p in procs):
            stop_process(proc)
    print(
        f"rolling restart: {load.calls} calls ({calls_before} before the first restart), "
        f"{sum(load.failed.values())} failed, {sum(load.missing.values())} missing a feature; "
        f"restarts (replica, seconds to SERVING, calls so far): {restarts}; "
        f"failures: {dict(load.failed)}; missing: {dict(load.missing)}"
    )
    assert load.calls >= MIN_CALLS
    assert not load.failed, load.failed
    assert not load.missing, load.missing
    # Calls ran during every restart, not only around them.
    counts = [calls for *_, calls in restarts]
    assert all(b > a for a, b in zip([calls_before, *counts], counts, strict=False)), restarts
