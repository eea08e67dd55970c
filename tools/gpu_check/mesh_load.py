"""The classify service and the gateway as processes, driven by many client processes.

Saturation: every client process keeps ``concurrency`` calls in flight for the
whole window (closed loop); images/s = answers / window. Fixed rate: calls are
sent on a schedule (open loop) and each latency is taken from its scheduled
send time, so a stalled server shows in p99 instead of slowing the senders.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.net import free_port
from tools.gpu_check.processes import log_tail, started

LATENCY_SAMPLES_PER_PROCESS = 20_000


@dataclass(frozen=True)
class Load:
    target: str  # "host:port"
    api: str  # "classify" (ClassifyService.Classify) or "gateway" (Analyze, classify only)
    processes: int
    concurrency: int  # closed loop: calls in flight per process
    seconds: float
    rate: float = 0.0  # > 0: open loop, calls/s over all processes


def _request(api: str, jpeg: bytes) -> Any:
    from visionmesh.v1 import classify_pb2, common_pb2, gateway_pb2

    image = common_pb2.Image(encoded=jpeg)
    if api == "classify":
        return classify_pb2.ClassifyRequest(image=image, top_k=5)
    return gateway_pb2.AnalyzeRequest(image=image, features=[common_pb2.FEATURE_CLASSIFY])


def _stub_call(api: str, channel: Any) -> Any:
    from visionmesh.v1 import classify_pb2_grpc, gateway_pb2_grpc

    if api == "classify":
        return classify_pb2_grpc.ClassifyServiceStub(channel).Classify
    return gateway_pb2_grpc.GatewayServiceStub(channel).Analyze


def _answer_problem(api: str, reply: Any) -> str:
    """Why a successful RPC still is not a classification ('' when it is one)."""
    if api == "gateway":
        if reply.errors:
            return "feature error: " + reply.errors[0].message[:80]
        if reply.cached:
            return "cached"
        reply = reply.classify
    return "" if reply.labels else "no labels"


async def _drive(load: Load, jpegs: list[bytes], start_at: float, index: int) -> dict[str, Any]:
    import grpc

    requests = [_request(load.api, j) for j in jpegs]
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async with grpc.aio.insecure_channel(load.target) as channel:
        call = _stub_call(load.api, channel)

        async def one(request: Any, sent: float) -> None:
            try:
                reply = await call(request, timeout=30)
                problem = _answer_problem(load.api, reply)
                outcomes[problem or "ok"] += 1
                if not problem and len(latencies) < LATENCY_SAMPLES_PER_PROCESS:
                    latencies.append(time.perf_counter() - sent)
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1

        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.perf_counter() + load.seconds
        if load.rate <= 0:

            async def worker(w: int) -> None:
                i = w
                while time.perf_counter() < end:
                    await one(requests[i % len(requests)], time.perf_counter())
                    i += load.concurrency

            await asyncio.gather(*(worker(w) for w in range(load.concurrency)))
        else:
            interval = load.processes / load.rate
            first = time.perf_counter() + interval * index / load.processes
            tasks, i = [], 0
            while True:
                due = first + i * interval
                if due >= end:
                    break
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(requests[i % len(requests)], due)))
                i += 1
            await asyncio.gather(*tasks)
    return {"outcomes": dict(outcomes), "latencies": latencies}


def _client_process(load: Load, jpegs: list[bytes], start_at: float, index: int, out: Any) -> None:
    try:
        out.put(asyncio.run(_drive(load, jpegs, start_at, index)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an outcome
        out.put(
            {
                "outcomes": {f"client crashed: {exc.__class__.__name__}: {exc}"[:120]: 1},
                "latencies": [],
            }
        )


def run_load(load: Load, jpegs: list[bytes], settle_s: float = 3.0) -> dict[str, Any]:
    """Drive ``load`` from ``load.processes`` spawned processes; answers/s, outcomes and latency
    percentiles."""
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    start_at = time.time() + settle_s  # every process imports grpc first, then all start together
    procs = [
        ctx.Process(target=_client_process, args=(load, jpegs, start_at, i, results), daemon=True)
        for i in range(load.processes)
    ]
    for p in procs:
        p.start()
    gathered: list[dict[str, Any]] = []
    try:
        wait_until = time.time() + settle_s + load.seconds + 40
        while len(gathered) < len(procs) and time.time() < wait_until:
            try:
                gathered.append(results.get(timeout=1.0))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    for g in gathered:
        outcomes.update(g["outcomes"])
        latencies += g["latencies"]
    row: dict[str, Any] = {
        "api": load.api,
        "mode": f"fixed {load.rate:.4g}/s" if load.rate > 0 else "saturation",
        "clients": f"{load.processes} proc x {load.concurrency if load.rate <= 0 else 'open loop'}",
        "seconds": load.seconds,
        "answers/s": round(outcomes["ok"] / load.seconds, 1),
        "outcomes": dict(outcomes),
        "reported": f"{len(gathered)}/{len(procs)}",
    }
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        row |= {"p50 ms": round(q[49] * 1e3, 2), "p99 ms": round(q[98] * 1e3, 2)}
    return row


@dataclass(frozen=True)
class MeshSettings:
    device: str
    precision: str
    cuda_graphs: bool
    instances: int
    max_batch_size: int


def classify_config(s: MeshSettings) -> dict[str, Any]:
    engine = {
        "backend": "torch",
        "device": s.device,
        "precision": s.precision,
        "cuda_graphs": s.cuda_graphs,
    }
    batcher = {
        "max_batch_size": s.max_batch_size,
        "max_queue_delay_us": 2000,
        "instances": s.instances,
    }
    return {
        "server": {"log_level": "WARNING"},
        "classifier": {"engine": engine, "batcher": batcher},
        "safety_model": {"engine": engine, "batcher": batcher},
    }


def gateway_config(classify_addr: str) -> dict[str, Any]:
    return {
        "server": {"log_level": "WARNING"},
        "discovery": "static",
        "services": {"classify": [classify_addr]},
        # Every call must reach the service: the result cache would answer repeats itself.
        "cache_max_bytes": 0,
        "max_in_flight": 4096,
    }


async def _wait_ready(api: str, target: str, jpeg: bytes, timeout_s: float, proc: Any) -> float:
    import grpc

    start = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        call = _stub_call(api, channel)
        last = ""
        while time.perf_counter() - start < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"{api} process exited with {proc.returncode}")
            try:
                reply = await call(_request(api, jpeg), timeout=10)
                problem = _answer_problem(api, reply)
                if not problem or problem == "cached":
                    return time.perf_counter() - start
                last = problem
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{api} at {target} not answering after {timeout_s:.0f} s (last: {last})")


class Mesh:
    """Context manager: classify + gateway processes on free loopback ports, always stopped
    after."""

    def __init__(self, settings: MeshSettings, work: Path, ready_timeout_s: float) -> None:
        self.settings = settings
        self.work = work
        self.ready_timeout_s = ready_timeout_s
        self.classify_addr = f"127.0.0.1:{free_port()}"
        self.gateway_addr = f"127.0.0.1:{free_port()}"
        self._stack: Any = None
        self.startup: dict[str, float] = {}

    def __enter__(self) -> Mesh:
        import contextlib

        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "classify.yaml").write_text(yaml.safe_dump(classify_config(self.settings)))
        (self.work / "gateway.yaml").write_text(yaml.safe_dump(gateway_config(self.classify_addr)))
        self._stack = contextlib.ExitStack()
        try:
            port = self.classify_addr.rsplit(":", 1)[1]
            self.classify = self._stack.enter_context(
                started(
                    [
                        "-m",
                        "services.classify",
                        "--config",
                        str(self.work / "classify.yaml"),
                        "--port",
                        port,
                    ],
                    self.work / "classify.log",
                )
            )
            port = self.gateway_addr.rsplit(":", 1)[1]
            self.gateway = self._stack.enter_context(
                started(
                    [
                        "-m",
                        "tools.gpu_check.gateway_without_av",
                        "--config",
                        str(self.work / "gateway.yaml"),
                        "--port",
                        port,
                    ],
                    self.work / "gateway.log",
                )
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def wait_ready(self, jpeg: bytes) -> None:
        try:
            self.startup["classify ready s"] = asyncio.run(
                _wait_ready(
                    "classify", self.classify_addr, jpeg, self.ready_timeout_s, self.classify
                )
            )
            self.startup["gateway ready s"] = asyncio.run(
                _wait_ready("gateway", self.gateway_addr, jpeg, 30.0, self.gateway)
            )
        except Exception as exc:
            raise RuntimeError(
                f"{exc}\n--- classify log ---\n{log_tail(self.work / 'classify.log')}"
                f"\n--- gateway log ---\n{log_tail(self.work / 'gateway.log')}"
            ) from exc

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
