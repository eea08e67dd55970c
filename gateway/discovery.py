"""Where the services are: static addresses, Consul, or Kubernetes headless-service DNS.

A resolver owns one gRPC channel per known instance (an ``Endpoint``, with
that instance's circuit breaker) and ``pick(service)`` hands out endpoints
round-robin, skipping instances whose breaker is open.

- ``StaticResolver`` (default; ``visionmesh up``): fixed ``host:port`` lists.
- ``ConsulResolver``: only instances whose Consul health checks pass; a
  background blocking-query watch per service adds channels for instances
  that appear and closes the channels of those that leave.
- ``DnsResolver``: Kubernetes headless services. One channel per service with
  target ``dns:///host:port`` and gRPC's ``round_robin`` policy, so gRPC itself
  spreads calls over every pod IP the name resolves to and re-resolves as pods
  come and go; ``pick`` returns that one endpoint. Its breaker guards the
  service as a whole (round_robin already routes around single dead pods).

Channels are made with ``services.common.tls.aio_channel`` (TLS or mutual TLS
when a ``ClientTlsConfig`` names files, plaintext otherwise) using the caller's
options (message sizes) and interceptors (tracing), and only in ``start()``,
inside the running event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from gateway.resilience import BreakerOpen, CircuitBreaker
from services.common import tls as tlsmod
from services.common.config import ClientTlsConfig, ConfigError
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]
# In-flight calls on a channel whose instance left get this long to finish.
CLOSE_GRACE_S = 5.0
ROUND_ROBIN_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Blocking-query wait of the Consul watches. Shorter than Consul's usual 30 s on
# purpose: the watch helper blocks a worker thread of the default executor, and
# asyncio.run() joins those threads at exit, so the wait bounds how long a
# stopping gateway can hang on an idle query. One idle request per service per
# 10 s costs the agent nothing.
WATCH_WAIT = "10s"


@dataclass
class Endpoint:
    """One place to send calls: its address, its channel, its circuit breaker."""

    address: str
    channel: grpc.aio.Channel
    breaker: CircuitBreaker
    # Stubs on this channel by service name, made on first use rather than per call.
    stubs: dict[str, Any] = field(default_factory=dict, repr=False)


class Resolver(Protocol):
    async def start(self) -> None:
        """Create channels (and start watches); call inside the running event loop."""

    def pick(self, service: str) -> Endpoint:
        """The next endpoint for ``service``; raises ``Unavailable`` when none can take a call."""

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint known now, of every service (health probes walk them)."""

    async def close(self) -> None:
        """Stop watches and close every channel."""


@dataclass
class _Pool:
    """Endpoints of one service plus the round-robin cursor."""

    endpoints: list[Endpoint] = field(default_factory=list)
    cursor: int = 0


class _PooledResolver:
    """Shared machinery: channel creation, round-robin with breaker skipping, closing."""

    kind = "static"

    def __init__(
        self,
        channel_options: ChannelOptions | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 5.0,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        self.tls = tls or ClientTlsConfig()
        self.channel_options = list(channel_options or [])
        self.interceptors = list(interceptors or [])
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self._pools: dict[str, _Pool] = {}
        self._started = False

    def _endpoint(
        self, address: str, target: str | None = None, extra_options: ChannelOptions = ()
    ) -> Endpoint:
        channel = tlsmod.aio_channel(
            target or address,
            self.tls,
            options=[*self.channel_options, *extra_options],
            interceptors=self.interceptors or None,
        )
        return Endpoint(
            address, channel, CircuitBreaker(self.breaker_failures, self.breaker_reset_s)
        )

    def addresses(self, service: str) -> list[str]:
        """Addresses currently known for ``service`` (for logs, status pages and tests)."""
        pool = self._pools.get(service)
        return [e.address for e in pool.endpoints] if pool else []

    def endpoints(self) -> list[Endpoint]:
        return [e for pool in self._pools.values() for e in pool.endpoints]

    def pick(self, service: str) -> Endpoint:
        if not self._started:
            raise Unavailable(f"{self.kind} resolver not started: no channel to {service!r} yet")
        pool = self._pools.get(service)
        if pool is None or not pool.endpoints:
            raise Unavailable(
                f"no healthy instance of service {service!r} is known ({self.kind} discovery)"
            )
        count = len(pool.endpoints)
        for step in range(count):
            endpoint = pool.endpoints[(pool.cursor + step) % count]
            if endpoint.breaker.allow():
                pool.cursor = (pool.cursor + step + 1) % count
                return endpoint
        addresses = ", ".join(e.address for e in pool.endpoints)
        raise BreakerOpen(
            f"every instance of service {service!r} has an open circuit breaker "
            f"({addresses}); retry shortly"
        )

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        self._started = False
        await asyncio.gather(
            *(e.channel.close() for pool in pools.values() for e in pool.endpoints),
            return_exceptions=True,
        )


class StaticResolver(_PooledResolver):
    """Fixed addresses per service (flags, env, config file); one channel per address."""

    kind = "static"

    def __init__(
        self,
        addresses: Mapping[str, Sequence[str]],
        channel_options: ChannelOptions | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 5.0,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        super().__init__(channel_options, interceptors, breaker_failures, breaker_reset_s, tls)
        self.configured = {
            service: list(dict.fromkeys(addrs)) for service, addrs in addresses.items()
        }

    async def start(self) -> None:
        if self._started:
            return
        self._pools = {
            service: _Pool([self._endpoint(a) for a in addrs])
            for service, addrs in self.configured.items()
        }
        self._started = True


class DnsResolver(_PooledResolver):
    """Kubernetes headless services: ``dns:///host:port`` with gRPC's round_robin across the pod
    IPs."""

    kind = "dns"

    def __init__(
        self,
        targets: Mapping[str, str],
        channel_options: ChannelOptions | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 5.0,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        super().__init__(channel_options, interceptors, breaker_failures, breaker_reset_s, tls)
        self.targets = {service: dns_target(host_port) for service, host_port in targets.items()}

    async def start(self) -> None:
        if self._started:
            return
        options = [("grpc.service_config", ROUND_ROBIN_CONFIG)]
        self._pools = {
            service: _Pool([self._endpoint(target, target, options)])
            for service, target in self.targets.items()
        }
        self._started = True


def dns_target(host_port: str) -> str:
    """``classify.visionmesh.svc.cluster.local:50051`` -> ``dns:///classify.visionmesh.svc.cluster.local:50051``."""
    if host_port.startswith("dns:"):
        return host_port
    if ":" not in host_port.rsplit("]", 1)[-1]:
        raise ValueError(f"DNS target {host_port!r} needs a port (host:port)")
    return f"dns:///{host_port}"


class ConsulResolver(_PooledResolver):
    """Instances whose Consul health checks pass, kept current by blocking-query watches."""

    kind = "consul"

    def __init__(
        self,
        consul_addr: str,
        service_names: Sequence[str],
        channel_options: ChannelOptions | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        breaker_failures: int = 5,
        breaker_reset_s: float = 5.0,
        watch_wait: str = WATCH_WAIT,
        retry_s: float = 1.0,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        super().__init__(channel_options, interceptors, breaker_failures, breaker_reset_s, tls)
        self.consul_addr = consul_addr
        self.service_names = list(dict.fromkeys(service_names))
        self.watch_wait = watch_wait
        self.retry_s = retry_s
        self._watches: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        # Set each time any service's instance list changes (tests and status pages wait on it).
        self.changed = asyncio.Event()

    async def start(self) -> None:
        if self._started:
            return
        from services.common import (
            consul,
        )  # imported here: py-consul is only needed when Consul is used

        self._pools = {service: _Pool() for service in self.service_names}
        self._started = True
        # Fill every pool before serving so the first requests have somewhere to go.
        initial = await asyncio.gather(
            *(consul.passing_instances(self.consul_addr, s) for s in self.service_names),
            return_exceptions=True,
        )
        for service, found in zip(self.service_names, initial, strict=True):
            if isinstance(found, BaseException):
                log.warning(
                    "consul lookup failed; watching for instances",
                    extra={"fields": {"service": service, "error": str(found)}},
                )
            else:
                self.update(service, found)
        self._watches = [
            asyncio.create_task(self._watch(service), name=f"consul-watch-{service}")
            for service in self.service_names
        ]

    async def _watch(self, service: str) -> None:
        from services.common import consul

        async for addresses in consul.watch_passing(
            self.consul_addr, service, wait=self.watch_wait, retry_s=self.retry_s
        ):
            self.update(service, addresses)

    def update(self, service: str, addresses: Sequence[str]) -> None:
        """Make ``service``'s endpoints exactly ``addresses``: keep known ones (and their
        breakers), add new, retire gone."""
        pool = self._pools.setdefault(service, _Pool())
        wanted = list(dict.fromkeys(addresses))
        current = {e.address: e for e in pool.endpoints}
        gone = [e for a, e in current.items() if a not in wanted]
        added = [a for a in wanted if a not in current]
        if not gone and not added:
            return
        pool.endpoints = [current.get(a) or self._endpoint(a) for a in wanted]
        pool.cursor = pool.cursor % len(pool.endpoints) if pool.endpoints else 0
        for endpoint in gone:
            task = asyncio.create_task(endpoint.channel.close(grace=CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        log.info(
            "instances changed",
            extra={
                "fields": {
                    "service": service,
                    "added": added,
                    "removed": [e.address for e in gone],
                    "now": wanted,
                }
            },
        )
        self.changed.set()

    async def close(self) -> None:
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches = []
        await asyncio.gather(*self._closing, return_exceptions=True)
        await super().close()


def make_resolver(
    kind: str,
    *,
    addresses: Mapping[str, Sequence[str]] | None = None,
    dns_targets: Mapping[str, str] | None = None,
    consul_addr: str = "",
    service_names: Sequence[str] | None = None,
    channel_options: ChannelOptions | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    breaker_failures: int = 5,
    breaker_reset_s: float = 5.0,
    tls: ClientTlsConfig | None = None,
) -> Resolver:
    """A resolver by name: "static" (``addresses``), "dns" (``dns_targets``) or "consul"
    (``consul_addr``)."""
    common: dict[str, Any] = {
        "channel_options": channel_options,
        "interceptors": interceptors,
        "breaker_failures": breaker_failures,
        "breaker_reset_s": breaker_reset_s,
        "tls": tls,
    }
    if kind == "static":
        return StaticResolver(addresses or {}, **common)
    if kind == "dns":
        if not dns_targets:
            raise ConfigError(
                "dns discovery needs dns_targets (service -> host:port of its headless Service)"
            )
        return DnsResolver(dns_targets, **common)
    if kind == "consul":
        if not consul_addr:
            raise ConfigError(
                "consul discovery needs a Consul agent address (server.consul_addr or "
                "CONSUL_HTTP_ADDR)"
            )
        names = list(service_names or (addresses or {}).keys())
        if not names:
            raise ConfigError("consul discovery needs the service names to watch")
        return ConsulResolver(consul_addr, names, **common)
    raise ConfigError(f"unknown discovery kind {kind!r}: use static, consul or dns")
