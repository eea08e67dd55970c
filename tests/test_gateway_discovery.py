"""Resolvers: static round-robin with breaker skipping, Kubernetes DNS channels, Consul watches.

No Consul binary exists on these machines, so the Consul tests run against a
tiny fake agent: an ``http.server`` in a thread that serves
``/v1/health/service/<name>?passing`` with ``X-Consul-Index`` and Consul's
blocking-query semantics (``?index=N&wait=Ws`` holds the request until the
index moves past N or the wait ends). Instances are real gRPC servers on
loopback, so picking an endpoint and calling it proves the channel works.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.discovery import ConsulResolver, DnsResolver, StaticResolver, dns_target, make_resolver
from gateway.resilience import BreakerOpen, BreakerState
from services.common.errors import Unavailable


async def serving(endpoint_channel: grpc.aio.Channel) -> bool:
    reply = await health_pb2_grpc.HealthStub(endpoint_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5.0
    )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def health_servers() -> AsyncIterator[list[str]]:
    """Three real gRPC servers that answer grpc.health.v1 Check with SERVING."""
    servers, addresses = [], []
    for _ in range(3):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    yield addresses
    await asyncio.gather(*(s.stop(None) for s in servers))


async def test_static_round_robin_across_instances(health_servers: list[str]) -> None:
    resolver = StaticResolver({"classify": health_servers, "ocr": health_servers[:1]})
    await resolver.start()
    try:
        picked = [resolver.pick("classify").address for _ in range(6)]
        assert picked == health_servers * 2
        assert {resolver.pick("ocr").address for _ in range(3)} == {health_servers[0]}
        assert await serving(resolver.pick("classify").channel)
    finally:
        await resolver.close()


async def test_static_skips_instances_with_open_breakers() -> None:
    resolver = StaticResolver(
        {"face": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]},
        breaker_failures=1,
        breaker_reset_s=60.0,
    )
    await resolver.start()
    try:
        bad = resolver.pick("face")
        bad.breaker.record_failure()
        assert bad.breaker.state is BreakerState.OPEN
        picked = {resolver.pick("face").address for _ in range(10)}
        assert picked == {"127.0.0.1:2", "127.0.0.1:3"}
        for address in ("127.0.0.1:2", "127.0.0.1:3"):
            next(
                e for e in resolver._pools["face"].endpoints if e.address == address
            ).breaker.record_failure()
        with pytest.raises(
            BreakerOpen, match="every instance of service 'face' has an open circuit breaker"
        ) as info:
            resolver.pick("face")
        assert isinstance(info.value, Unavailable)
    finally:
        await resolver.close()


async def test_pick_without_instances_is_unavailable() -> None:
    resolver = StaticResolver({"hash": []})
    with pytest.raises(Unavailable, match="not started"):
        resolver.pick("hash")
    await resolver.start()
    with pytest.raises(Unavailable, match="no healthy instance of service 'hash'"):
        resolver.pick("hash")
    with pytest.raises(Unavailable, match="no healthy instance of service 'video'"):
        resolver.pick("video")
    await resolver.close()


async def test_dns_resolver_uses_one_round_robin_channel(health_servers: list[str]) -> None:
    port = health_servers[0].rsplit(":", 1)[1]
    resolver = DnsResolver({"classify": f"localhost:{port}"})
    await resolver.start()
    try:
        endpoint = resolver.pick("classify")
        assert endpoint.address == f"dns:///localhost:{port}"
        assert resolver.pick("classify") is endpoint
        assert await serving(
            endpoint.channel
        )  # resolved through gRPC's DNS resolver, round_robin policy accepted
    finally:
        await resolver.close()


def test_dns_target_and_factory() -> None:
    assert (
        dns_target("classify.vm.svc.cluster.local:50051")
        == "dns:///classify.vm.svc.cluster.local:50051"
    )
    assert dns_target("dns:///x:1") == "dns:///x:1"
    with pytest.raises(ValueError, match="needs a port"):
        dns_target("classify")
    assert isinstance(
        make_resolver("static", addresses={"ocr": ["127.0.0.1:50052"]}), StaticResolver
    )
    assert isinstance(make_resolver("dns", dns_targets={"ocr": "ocr:50052"}), DnsResolver)
    assert isinstance(
        make_resolver("consul", consul_addr="127.0.0.1:8500", service_names=["ocr"]), ConsulResolver
    )
    with pytest.raises(ValueError, match="unknown discovery kind"):
        make_resolver("zookeeper")
    with pytest.raises(ValueError, match="Consul agent address"):
        make_resolver("consul", service_names=["ocr"])


class FakeConsul:
    """The health endpoint of a Consul agent, with blocking queries; instances are set by the
    test."""

    def __init__(self) -> None:
        self.instances: dict[str, list[str]] = {}
        self.index = 10
        self.cond = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                if not url.path.startswith("/v1/health/service/"):
                    self.send_error(404)
                    return
                name = url.path.rsplit("/", 1)[1]
                if "index" in query:
                    wait_s = float(query.get("wait", ["5s"])[0].rstrip("s"))
                    with fake.cond:
                        fake.cond.wait_for(
                            lambda: fake.index > int(query["index"][0]), timeout=wait_s
                        )
                with fake.cond:
                    index, addresses = fake.index, list(fake.instances.get(name, []))
                body = json.dumps(
                    [
                        {
                            "Node": {"Node": "fake", "Address": "127.0.0.1"},
                            "Service": {
                                "Service": name,
                                "Address": a.rsplit(":", 1)[0],
                                "Port": int(a.rsplit(":", 1)[1]),
                            },
                            "Checks": [],
                        }
                        for a in addresses
                    ]
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Consul-Index", str(index))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def set(self, service: str, addresses: list[str]) -> None:
        with self.cond:
            self.instances[service] = addresses
            self.index += 1
            self.cond.notify_all()


@pytest.fixture
def fake_consul() -> Iterator[FakeConsul]:
    agent = FakeConsul()
    thread = threading.Thread(target=agent.server.serve_forever, daemon=True)
    thread.start()
    yield agent
    agent.server.shutdown()
    agent.server.server_close()


async def wait_for(resolver: ConsulResolver, service: str, expected: list[str]) -> None:
    """Until the resolver knows exactly ``expected`` (any order: Consul answers sorted by
    address)."""

    async def until() -> None:
        while sorted(resolver.addresses(service)) != sorted(expected):
            resolver.changed.clear()
            if sorted(resolver.addresses(service)) == sorted(expected):
                return
            await resolver.changed.wait()

    await asyncio.wait_for(until(), timeout=10.0)


async def test_consul_resolver_follows_instances_coming_and_going(
    fake_consul: FakeConsul, health_servers: list[str]
) -> None:
    a, b, c = health_servers
    fake_consul.set("classify", [a])
    resolver = ConsulResolver(
        fake_consul.address, ["classify", "ocr"], watch_wait="2s", retry_s=0.1
    )
    await resolver.start()
    try:
        assert resolver.addresses("classify") == [a]  # known before start() returns, no waiting
        with pytest.raises(Unavailable, match="no healthy instance of service 'ocr'"):
            resolver.pick("ocr")
        first = resolver.pick("classify")
        assert await serving(first.channel)

        fake_consul.set("classify", [a, b])  # scale up
        await wait_for(resolver, "classify", [a, b])
        assert {resolver.pick("classify").address for _ in range(4)} == {a, b}
        assert (
            next(e for e in resolver._pools["classify"].endpoints if e.address == a) is first
        )  # kept, not rebuilt

        fake_consul.set("classify", [b, c])  # a fails its checks, c joins
        await wait_for(resolver, "classify", [b, c])
        assert {resolver.pick("classify").address for _ in range(4)} == {b, c}
        for _ in range(2):
            assert await serving(resolver.pick("classify").channel)
        await asyncio.gather(*resolver._closing)  # the retired instance's channel is closed
        with pytest.raises(grpc.aio.UsageError):
            await health_pb2_grpc.HealthStub(first.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )

        fake_consul.set("ocr", [c])
        await wait_for(resolver, "ocr", [c])
        assert resolver.pick("ocr").address == c

        fake_consul.set("classify", [])  # everything gone
        await wait_for(resolver, "classify", [])
        with pytest.raises(Unavailable, match="no healthy instance of service 'classify'"):
            resolver.pick("classify")
    finally:
        await asyncio.wait_for(resolver.close(), timeout=10.0)


async def test_consul_resolver_starts_even_when_the_agent_is_down() -> None:
    resolver = ConsulResolver("127.0.0.1:1", ["classify"], watch_wait="1s", retry_s=0.1)
    await asyncio.wait_for(resolver.start(), timeout=10.0)
    try:
        with pytest.raises(Unavailable, match="no healthy instance"):
            resolver.pick("classify")
    finally:
        await asyncio.wait_for(resolver.close(), timeout=10.0)
