"""Consul registration and discovery against a fake agent.

No Consul binary exists on these machines, so the agent is a small
``http.server`` that speaks the part of Consul's HTTP API the mesh uses:
service register/deregister, and ``/v1/health/service/<name>?passing`` with
blocking queries (``index``/``wait`` and the ``X-Consul-Index`` header). Like a
real agent it runs each registration's gRPC health check (grpc.health.v1) to
decide which instances pass.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import consul
from services.common.config import ServerConfig
from services.common.server import MeshServer


class FakeAgent:
    """In-memory Consul agent state shared by the HTTP handler threads."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.index = 1
        self.changed = threading.Condition()
        self.requests: list[str] = []

    def register(self, body: dict[str, Any]) -> None:
        lower = {k.lower(): v for k, v in body.items()}
        sid = lower.get("id") or lower["name"]
        with self.changed:
            self.services[sid] = lower
            self.index += 1
            self.changed.notify_all()

    def deregister(self, sid: str) -> bool:
        with self.changed:
            found = self.services.pop(sid, None) is not None
            self.index += 1
            self.changed.notify_all()
            return found

    def wait_for_change(self, index: int, wait_s: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.index > index, timeout=wait_s)

    @staticmethod
    def check_passes(service: dict[str, Any]) -> bool:
        for check in service.get("checks", []):
            target = {k.lower(): v for k, v in check.items()}.get("grpc")
            if target is None:
                continue
            try:
                with grpc.insecure_channel(target) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
            except grpc.RpcError:
                return False
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    def health(self, name: str, passing: bool) -> list[dict[str, Any]]:
        with self.changed:
            candidates = [s for s in self.services.values() if s["name"] == name]
        return [
            {
                "Node": {"Node": "fake", "Address": "127.0.0.1"},
                "Service": {
                    "ID": s.get("id"),
                    "Service": s["name"],
                    "Address": s.get("address", ""),
                    "Port": s.get("port", 0),
                    "Tags": s.get("tags", []),
                },
                "Checks": [],
            }
            for s in candidates
            if not passing or self.check_passes(s)
        ]


def _handler(agent: FakeAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: Any, index: int | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if index is not None:
                self.send_header("X-Consul-Index", str(index))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            agent.requests.append(f"PUT {self.path}")
            url = urllib.parse.urlparse(self.path)
            if url.path == "/v1/agent/service/register":
                length = int(self.headers.get("Content-Length", 0))
                agent.register(json.loads(self.rfile.read(length) or b"{}"))
                self._reply(200, None)
            elif url.path.startswith("/v1/agent/service/deregister/"):
                sid = urllib.parse.unquote(url.path.rsplit("/", 1)[1])
                self._reply(200 if agent.deregister(sid) else 404, None)
            else:
                self._reply(404, {"error": "unsupported by the fake agent"})

        def do_GET(self) -> None:
            agent.requests.append(f"GET {self.path}")
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            if not url.path.startswith("/v1/health/service/"):
                self._reply(404, {"error": "unsupported by the fake agent"})
                return
            if "index" in query:
                wait = query.get("wait", ["300s"])[0]
                agent.wait_for_change(int(query["index"][0]), float(wait.rstrip("s")))
            name = urllib.parse.unquote(url.path.rsplit("/", 1)[1])
            self._reply(200, agent.health(name, passing="passing" in query), agent.index)

    return Handler


@pytest.fixture
def fake_agent() -> Iterator[tuple[FakeAgent, str]]:
    agent = FakeAgent()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(agent))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent, f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _bare_server(consul_addr: str = "", advertise_addr: str = "") -> MeshServer:
    # Health + reflection only: registration does not depend on any model.
    cfg = ServerConfig(
        host="127.0.0.1",
        port=0,
        consul_addr=consul_addr,
        advertise_addr=advertise_addr,
        drain_grace_s=0.5,
    )
    return MeshServer("probe", cfg, [])


async def test_attach_is_a_no_op_without_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    server = _bare_server()
    consul.attach(server, "classify")
    assert server.on_serving == [] and server.on_draining == []


def test_parse_agent_address() -> None:
    assert consul.parse_agent_address("10.0.0.5:8501") == consul.AgentAddress(
        "http", "10.0.0.5", 8501
    )
    assert consul.parse_agent_address("https://consul.local:8443") == consul.AgentAddress(
        "https", "consul.local", 8443
    )
    assert consul.parse_agent_address("consul") == consul.AgentAddress("http", "consul", 8500)
    with pytest.raises(ValueError, match="no host"):
        consul.parse_agent_address("http://")


async def test_registers_with_grpc_check_and_deregisters_on_drain(
    fake_agent: tuple[FakeAgent, str],
) -> None:
    agent, addr = fake_agent
    server = _bare_server(consul_addr=addr)
    consul.attach(server, "classify")
    await server.start()
    try:
        (entry,) = agent.services.values()
        assert entry["name"] == "classify"
        assert entry["id"] == f"classify-127.0.0.1-{server.port}"
        assert consul.MESH_TAG in entry["tags"]
        (check,) = entry["checks"]
        assert check["grpc"] == f"127.0.0.1:{server.port}"
        assert check["DeregisterCriticalServiceAfter"] == consul.DEREGISTER_CRITICAL_AFTER
        # The fake agent really runs the gRPC health check against the server.
        assert await consul.passing_instances(addr, "classify") == [f"127.0.0.1:{server.port}"]
        assert await consul.passing_instances(addr, "ocr") == []
    finally:
        await server.stop(0.5)
    assert agent.services == {}
    assert any(
        r.startswith("PUT /v1/agent/service/deregister/classify-127.0.0.1-") for r in agent.requests
    )


async def test_env_address_and_advertise_addr(
    fake_agent: tuple[FakeAgent, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, addr = fake_agent
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{addr}")
    server = _bare_server(advertise_addr="10.1.2.3:6000")
    consul.attach(server, "hash")
    await server.start()
    try:
        (entry,) = agent.services.values()
        assert (entry["address"], entry["port"], entry["id"]) == (
            "10.1.2.3",
            6000,
            "hash-10.1.2.3-6000",
        )
        # Nothing listens on 10.1.2.3:6000 here, so its gRPC check fails: not passing.
        assert await consul.passing_instances(addr, "hash") == []
    finally:
        await server.stop(0.5)


async def test_crashed_instance_stops_passing(fake_agent: tuple[FakeAgent, str]) -> None:
    agent, addr = fake_agent
    server = _bare_server(consul_addr=addr)
    consul.attach(server, "face")
    await server.start()
    server.on_draining.clear()  # a crash: no deregistration
    await server.stop(0.1)
    assert len(agent.services) == 1
    assert await consul.passing_instances(addr, "face") == []


async def test_unreachable_agent_does_not_stop_the_service() -> None:
    server = _bare_server(consul_addr="127.0.0.1:1")
    consul.attach(server, "ocr")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2.0
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0.1)


async def _next(watch: AsyncIterator[list[str]], timeout: float = 5.0) -> list[str]:
    return await asyncio.wait_for(watch.__anext__(), timeout)


async def test_watch_follows_registrations_with_blocking_queries(
    fake_agent: tuple[FakeAgent, str],
) -> None:
    agent, addr = fake_agent
    first, second = _bare_server(consul_addr=addr), _bare_server(consul_addr=addr)
    for s in (first, second):
        consul.attach(s, "classify")
    watch = consul.watch_passing(addr, "classify", wait="10s")
    try:
        assert await _next(watch) == []
        await first.start()
        assert await _next(watch) == [first.address]
        started = time.monotonic()
        await second.start()
        assert await _next(watch) == sorted([first.address, second.address])
        assert time.monotonic() - started < 5.0  # answered on the change, not after the wait
        await first.stop(0.1)
        assert await _next(watch) == [second.address]
        assert any("index=" in r and "wait=10s" in r for r in agent.requests)
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        for s in (first, second):
            await s.stop(0.1)
