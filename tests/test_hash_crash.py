"""Durability: SIGKILL the hash service mid-stream of Adds; every acknowledged Add survives the
restart."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionmesh.v1 import hash_pb2, hash_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "services.hash",
        "--port",
        str(port),
        "--set",
        f"storage.data_dir={data_dir}",
    ]
    return subprocess.Popen(
        args, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ}
    )


async def wait_serving(
    channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "hash service exited during start-up"
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("hash service did not become SERVING")


def code_for(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 256, 16, dtype=np.uint8).tobytes()


async def add_then_kill(
    stub: hash_pb2_grpc.HashServiceStub,
    proc: subprocess.Popen[bytes],
    acknowledged: int,
    timeout: float,
    method: str = "itq",
) -> tuple[int, set[int]]:
    """Adds of ``item-<i>`` from 16 writers until ``acknowledged`` are answered, then SIGKILL in
    the middle of the next batches: (Adds sent, the acknowledged ones)."""
    done_ids: set[int] = set()

    async def add(i: int) -> None:
        code = hash_pb2.HashCode(code=code_for(i), bits=128, method=method)
        await stub.Add(
            hash_pb2.AddRequest(collection="crash", id=f"item-{i}", code=code), timeout=timeout
        )
        done_ids.add(i)

    next_i = 0
    in_flight: set[asyncio.Task[None]] = set()
    while len(done_ids) < acknowledged:
        while len(in_flight) < 16:
            in_flight.add(asyncio.create_task(add(next_i)))
            next_i += 1
        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    proc.send_signal(signal.SIGKILL)
    await asyncio.gather(*in_flight, return_exceptions=True)
    return next_i, done_ids


async def assert_acknowledged_survive(
    stub: hash_pb2_grpc.HashServiceStub, sent: int, acknowledged: set[int]
) -> int:
    """Every acknowledged item is back byte for byte, whatever else survived is what was sent,
    and the index agrees with the store; returns how many items survived."""
    present = 0
    for i in range(sent):
        reply = await stub.Get(hash_pb2.GetRequest(collection="crash", id=f"item-{i}"), timeout=5.0)
        if i in acknowledged:
            assert reply.found, f"acknowledged item-{i} was lost"
        if reply.found:
            present += 1
            # Nothing corrupted: whatever survived is byte-for-byte what was sent.
            assert reply.code.code == code_for(i) and reply.code.bits == 128
    probe = min(acknowledged)
    found = await stub.Search(
        hash_pb2.SearchRequest(
            collection="crash", code=hash_pb2.HashCode(code=code_for(probe), bits=128), k=1
        )
    )
    assert found.matches[0].id == f"item-{probe}" and found.matches[0].distance == 0
    return present


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_sigkill_mid_stream_loses_no_acknowledged_add(tmp_path: Path) -> None:
    port, data_dir, log = free_port(), tmp_path / "data", tmp_path / "service.log"
    proc = start_service(port, data_dir, log)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, proc)
            stub = hash_pb2_grpc.HashServiceStub(channel)
            # 16 writers keep Adds in flight, so the kill lands in the middle of group commits.
            sent, acknowledged = await add_then_kill(stub, proc, 400, timeout=10.0)
        proc.wait(10)
        assert len(acknowledged) >= 400

        proc = start_service(port, data_dir, log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, proc)
            stub = hash_pb2_grpc.HashServiceStub(channel)
            present = await assert_acknowledged_survive(stub, sent, acknowledged)
            assert present >= len(acknowledged)
            # The service keeps taking writes.
            more = await stub.Add(
                hash_pb2.AddRequest(
                    collection="crash",
                    id="after-restart",
                    code=hash_pb2.HashCode(code=code_for(10**6), bits=128),
                )
            )
            assert not more.replaced
    finally:
        stop(proc)
