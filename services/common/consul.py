"""Consul service discovery: register on serve, deregister on drain, resolve healthy instances.

Only active when ``server.consul_addr`` (or the ``CONSUL_HTTP_ADDR`` environment
variable) is set; otherwise ``attach`` does nothing and services use static
addresses or Kubernetes DNS. The registration carries a gRPC health check
(``grpc.health.v1``), so Consul itself marks an instance critical when it stops
answering; on SIGTERM the instance deregisters *before* the drain starts so
callers that follow ``watch_passing`` stop sending to it.

py-consul's client is synchronous (requests); every call runs in a worker
thread so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import consul

from services.common.server import MeshServer

T = TypeVar("T")

log = logging.getLogger(__name__)

# Tag on every VisionMesh registration (lets operators list the mesh in the Consul UI).
MESH_TAG = "visionmesh"
CHECK_INTERVAL = "5s"
CHECK_TIMEOUT = "2s"
# A crashed pod (no SIGTERM, no deregistration) disappears after this long critical.
DEREGISTER_CRITICAL_AFTER = "1m"
# Blocking-query wait of the watch; Consul answers earlier when the index moves.
WATCH_WAIT = "30s"


@dataclass(frozen=True)
class AgentAddress:
    scheme: str
    host: str
    port: int


def parse_agent_address(addr: str) -> AgentAddress:
    """``host:port`` or ``http(s)://host:port`` (the forms CONSUL_HTTP_ADDR takes)."""
    text = addr.strip()
    parsed = urllib.parse.urlparse(text if "//" in text else f"//{text}")
    if not parsed.hostname:
        raise ValueError(
            f"Consul address {addr!r} has no host (expected host:port or http://host:port)"
        )
    return AgentAddress(parsed.scheme or "http", parsed.hostname, parsed.port or 8500)


def client(addr: str) -> consul.Consul:
    agent = parse_agent_address(addr)
    return consul.Consul(host=agent.host, port=agent.port, scheme=agent.scheme)


def configured_address(server: MeshServer) -> str:
    """The agent to talk to: the server's config first, then CONSUL_HTTP_ADDR; "" = Consul off."""
    return server.config.consul_addr or os.environ.get("CONSUL_HTTP_ADDR", "")


def advertised(server: MeshServer, bound: str) -> tuple[str, int]:
    """Host and port other machines reach us on.

    ``advertise_addr`` wins (Kubernetes sets it from the pod IP); a wildcard bind
    falls back to this host's resolved address, since 0.0.0.0 is not routable.
    """
    text = server.config.advertise_addr or bound
    host, _, port = text.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostbyname(socket.gethostname())
    return host, int(port) if port else server.port


def service_id(service_name: str, host: str, port: int) -> str:
    return f"{service_name}-{host}-{port}"


@dataclass
class ConsulRegistration:
    """One instance's entry in Consul; the hooks MeshServer calls on serve and drain."""

    agent_addr: str
    service_name: str
    server: MeshServer
    registered_id: str | None = None

    async def on_serving(self, bound: str) -> None:
        host, port = advertised(self.server, bound)
        sid = service_id(self.service_name, host, port)
        tls = self.server.config.tls
        check = consul.Check.grpc(
            f"{host}:{port}",
            CHECK_INTERVAL,
            # A TLS server only answers TLS health checks. Consul's agent has no
            # client certificate, so mutual-TLS servers need the agent's own TLS
            # settings (or a Kubernetes gRPC probe instead).
            use_tls=True if tls.cert_file else None,
            timeout=CHECK_TIMEOUT,
            deregister=DEREGISTER_CRITICAL_AFTER,
        )
        try:
            await asyncio.to_thread(
                client(self.agent_addr).agent.service.register,
                self.service_name,
                service_id=sid,
                address=host,
                port=port,
                tags=[MESH_TAG, "grpc"],
                check=check,
            )
        except Exception:
            # Discovery is an add-on: the instance still serves (static addresses, k8s DNS).
            log.exception(
                "consul registration failed",
                extra={"fields": {"agent": self.agent_addr, "service_id": sid}},
            )
            return
        self.registered_id = sid
        log.info(
            "registered with consul",
            extra={"fields": {"agent": self.agent_addr, "service_id": sid}},
        )

    async def on_draining(self) -> None:
        if self.registered_id is None:
            return
        sid, self.registered_id = self.registered_id, None
        await asyncio.to_thread(client(self.agent_addr).agent.service.deregister, sid)
        log.info("deregistered from consul", extra={"fields": {"service_id": sid}})


def attach(server: MeshServer, service_name: str) -> None:
    """Register ``server`` with Consul while it serves, when an agent is configured."""
    agent_addr = configured_address(server)
    if not agent_addr:
        return
    parse_agent_address(agent_addr)  # fail at start-up on a malformed address, not on first use
    registration = ConsulRegistration(agent_addr, service_name, server)
    server.on_serving.append(registration.on_serving)
    server.on_draining.append(registration.on_draining)


def _addresses(entries: list[dict[str, Any]] | None) -> list[str]:
    """``host:port`` of each health entry; the service address, else the node's."""
    out = []
    for entry in entries or []:
        svc = entry.get("Service", {})
        host = svc.get("Address") or entry.get("Node", {}).get("Address", "")
        if host and svc.get("Port"):
            out.append(f"{host}:{svc['Port']}")
    return sorted(set(out))


def _query(
    agent_addr: str, service_name: str, index: str | None, wait: str
) -> tuple[str | None, list[str]]:
    idx, entries = client(agent_addr).health.service(
        service_name, passing=True, index=index, wait=wait if index else None
    )
    return (str(idx) if idx is not None else None), _addresses(entries)


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on a daemon thread: a long-poll still waiting at exit never delays
    shutdown
    (``asyncio.to_thread`` uses the default pool, which ``asyncio.run`` joins)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], object]) -> None:
        try:
            loop.call_soon_threadsafe(lambda: future.done() or outcome())
        except RuntimeError:  # the loop closed while we waited: nobody is listening
            pass

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc  # ``exc`` is unbound when the except block ends; the callback runs later
            settle(lambda: future.set_exception(error))
        else:
            settle(lambda: future.set_result(result))

    threading.Thread(target=run, name="consul-query", daemon=True).start()
    return await future


async def passing_instances(consul_addr: str, service_name: str) -> list[str]:
    """``host:port`` of every instance of ``service_name`` whose checks pass, sorted."""
    _, addresses = await _in_daemon_thread(_query, consul_addr, service_name, None, WATCH_WAIT)
    return addresses


async def watch_passing(
    consul_addr: str, service_name: str, *, wait: str = WATCH_WAIT, retry_s: float = 1.0
) -> AsyncIterator[list[str]]:
    """Yield the passing instances now, then again each time the set changes.

    Uses Consul blocking queries (``?index=N&wait=...``): the agent holds the
    request until the index moves or the wait ends, so following changes costs
    one idle HTTP request per ``wait``. Agent errors are logged and retried;
    the caller keeps its last known list meanwhile.
    """
    index: str | None = None
    last: list[str] | None = None
    while True:
        try:
            new_index, addresses = await _in_daemon_thread(
                _query, consul_addr, service_name, index, wait
            )
        except Exception as exc:
            log.warning(
                "consul watch failed; retrying",
                extra={"fields": {"service": service_name, "error": str(exc)}},
            )
            index = None
            await asyncio.sleep(retry_s)
            continue
        # An index that goes backwards (agent restart) means start over, per Consul's docs.
        if new_index is None or (index is not None and _as_int(new_index) < _as_int(index)):
            index = None
        else:
            index = new_index
        if addresses != last:
            last = addresses
            yield addresses
        if new_index is None:  # no X-Consul-Index: cannot block, so poll gently
            await asyncio.sleep(retry_s)


def _as_int(index: str) -> int:
    try:
        return int(index)
    except ValueError:
        return 0
