"""A ghz-compatible load runner in Python: same config files, same JSON report.

    python -m loadtest.runner loadtest/classify.json --duration 5s --out report.json

For machines without ghz (this one). Several worker processes (``--processes``,
default: CPU count) each run an asyncio gRPC client with a share of the
concurrency and of the offered rate, so the client's GIL is not what limits
the measurement. Loopback targets only; count, time and concurrency bounded
(see ghzconfig). The request is built from the config's ``data`` through the
protobuf JSON mapping, exactly as ghz does, from the generated descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import pkgutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from loadtest import ghzconfig, report
from loadtest.report import CallResult


def _import_generated() -> None:
    import visionmesh.v1

    for module in pkgutil.iter_modules(visionmesh.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"visionmesh.v1.{module.name}")


def message_classes(full_method: str) -> tuple[type[Message], type[Message]]:
    """Request and response classes of ``package.Service.Method`` from the generated code."""
    _import_generated()
    try:
        method = descriptor_pool.Default().FindMethodByName(full_method)
    except KeyError as exc:
        raise ghzconfig.ConfigError(f"unknown call {full_method!r}") from exc
    return message_factory.GetMessageClass(method.input_type), message_factory.GetMessageClass(
        method.output_type
    )


def requests_of(cfg: ghzconfig.RunConfig) -> list[bytes]:
    """The serialized request(s) to send, round-robin (ghz sends array data the same way)."""
    request_cls, _ = message_classes(cfg.full_method)
    if cfg.binary is not None:
        request_cls.FromString(cfg.binary)  # must parse as the call's request
        return [cfg.binary]
    try:
        return [json_format.ParseDict(item, request_cls()).SerializeToString() for item in cfg.data]
    except json_format.ParseError as exc:
        raise ghzconfig.ConfigError(
            f"data does not match {request_cls.DESCRIPTOR.full_name}: {exc}"
        ) from exc


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process's share of the run."""

    host: str
    method_path: str
    payloads: list[bytes]
    concurrency: int
    total: int | None
    duration_s: float | None
    timeout_s: float
    schedule: ghzconfig.LoadSchedule
    share: float  # this worker's fraction of the offered rate
    start_at: float  # time.time() at which every worker starts sending


class Pacer:
    """Hands out send slots at the schedule's rate (open loop: late slots go at once)."""

    def __init__(self, schedule: ghzconfig.LoadSchedule, share: float, start: float) -> None:
        self.schedule, self.share, self.start = schedule, share, start
        self.next_slot = start

    async def wait_turn(self) -> None:
        rate = self.schedule.rate_at(self.next_slot - self.start)
        if rate is None:
            return
        slot = self.next_slot
        self.next_slot += 1.0 / (rate * self.share)
        delay = slot - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _run_worker(plan: WorkerPlan) -> tuple[list[CallResult], str]:
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    start = time.monotonic()
    deadline = start + plan.duration_s if plan.duration_s else None
    pacer = Pacer(plan.schedule, plan.share, start)
    results: list[CallResult] = []
    issued = 0
    end_reason = "normal"
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(plan.host, options=options) as channel:
        call = channel.unary_unary(plan.method_path)  # bytes in, bytes out: no re-encoding per call

        async def one_worker() -> None:
            nonlocal issued, end_reason
            while True:
                if plan.total is not None and issued >= plan.total:
                    return
                # Claim the call before yielding to the pacer, so the total is never exceeded.
                payload = plan.payloads[issued % len(plan.payloads)]
                issued += 1
                await pacer.wait_turn()
                if deadline is not None and time.monotonic() >= deadline:
                    end_reason = "timeout"
                    return
                sent = time.perf_counter_ns()
                try:
                    await call(payload, timeout=plan.timeout_s)
                    results.append(CallResult(time.perf_counter_ns() - sent, "OK"))
                except grpc.aio.AioRpcError as exc:
                    name = report.ghz_code_name(exc.code())
                    results.append(
                        CallResult(
                            time.perf_counter_ns() - sent,
                            name,
                            report.ghz_error_text(name, exc.details() or ""),
                        )
                    )

        await asyncio.gather(*(one_worker() for _ in range(plan.concurrency)))
    return results, end_reason


def _worker_main(plan: WorkerPlan) -> tuple[list[CallResult], str]:
    return asyncio.run(_run_worker(plan))


def _split(amount: int, parts: int) -> list[int]:
    return [amount // parts + (1 if i < amount % parts else 0) for i in range(parts)]


def run(cfg: ghzconfig.RunConfig, processes: int | None = None) -> dict[str, Any]:
    """Run the load described by ``cfg``; return the ghz-shaped report."""
    ghzconfig.require_loopback(cfg.host)  # also checked on load; cheap insurance for direct callers
    payloads = requests_of(cfg)
    workers = max(
        1, min(processes or os.cpu_count() or 1, cfg.concurrency, cfg.total or cfg.concurrency)
    )
    concurrency = _split(cfg.concurrency, workers)
    totals: list[int | None] = (
        list(_split(cfg.total, workers)) if cfg.total is not None else [None] * workers
    )
    start_at = time.time() + 0.5 + 0.3 * workers  # spawn start-up, so all begin together
    plans = [
        WorkerPlan(
            cfg.host,
            cfg.method_path,
            payloads,
            concurrency[i],
            totals[i],
            cfg.duration_s,
            cfg.timeout_s,
            cfg.schedule,
            1.0 / workers,
            start_at,
        )
        for i in range(workers)
    ]
    started = datetime.now(UTC)
    # spawn, not fork: gRPC's threads do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        outcomes = pool.map(_worker_main, plans)
    wall_ns = int(max(0.0, time.time() - start_at) * 1e9)
    results = [r for rs, _ in outcomes for r in rs]
    end_reason = "timeout" if any(reason == "timeout" for _, reason in outcomes) else "normal"
    return report.build(cfg.name, results, wall_ns, end_reason, cfg.source, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.runner", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="ghz JSON config file")
    parser.add_argument("--host", help="override the config's host (loopback only)")
    parser.add_argument("--duration", help="override the duration, e.g. 5s")
    parser.add_argument("--total", type=int, help="override the total number of calls")
    parser.add_argument("--concurrency", type=int, help="override the concurrency")
    parser.add_argument("--rps", type=int, help="override the offered rate (constant schedule)")
    parser.add_argument("--processes", type=int, help="client processes (default: CPU count)")
    parser.add_argument("--out", help="write the JSON report here (default: stdout)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("concurrency", args.concurrency)) if v is not None
    }
    if args.duration:
        overrides["duration"] = args.duration
    if args.total:
        overrides["total"] = args.total
        if not args.duration:  # ghz: a duration wins over a total, so drop the config's
            overrides |= {"duration": "", "load-max-duration": ""}
    if args.rps:
        overrides |= {"rps": args.rps, "load-schedule": "const"}
    try:
        cfg = ghzconfig.load(args.config, overrides)
        result = run(cfg, args.processes)
    except ghzconfig.ConfigError as exc:
        print(f"loadtest: {args.config}: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
