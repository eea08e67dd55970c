"""grpc.aio server bootstrap shared by every service and the gateway.

Health (``grpc.health.v1``) is always on, reflection only when
``server.reflection`` is set; metrics and tracing interceptors are installed,
and every request message passes the request guard first (per-RPC size limit,
malformed bytes and out-of-range options answer INVALID_ARGUMENT). TLS and
mutual TLS come from ``server.tls``. SIGTERM/SIGINT drain gracefully: health
turns NOT_SERVING, in-flight calls get ``drain_grace_s`` to finish, then models
close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import metrics, tls, tracing
from services.common.config import ServerConfig
from services.common.interceptors import MetricsInterceptor, RequestGuardInterceptor

log = logging.getLogger(__name__)


class Lifecycle(Protocol):
    """Servicers that own models: loaded before serving, closed after the drain."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Registration:
    """One gRPC service hosted by the server: its full name, servicer and adder."""

    full_name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    # Largest request message per method name (e.g. "Analyze"), in bytes; methods
    # not listed get ``server.max_message_bytes``.
    message_limits: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        pb2: ModuleType,
        pb2_grpc: ModuleType,
        service: str,
        servicer: Any,
        message_limits: Mapping[str, int] | None = None,
    ) -> Registration:
        """The registration of ``service`` (e.g. "ClassifyService") from its generated modules."""
        full_name = pb2.DESCRIPTOR.services_by_name[service].full_name
        return cls(
            full_name,
            servicer,
            getattr(pb2_grpc, f"add_{service}Servicer_to_server"),
            dict(message_limits or {}),
        )

    def method_limits(self) -> dict[str, int]:
        """Full method path ("/pkg.Service/Method") -> request byte limit."""
        return {f"/{self.full_name}/{m}": n for m, n in self.message_limits.items()}


@dataclass
class MeshServer:
    name: str
    config: ServerConfig
    registrations: Sequence[Registration]
    # Called once serving (with the bound address) and once draining starts.
    on_serving: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    on_draining: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    server: grpc.aio.Server | None = None
    health: HealthServicer = field(default_factory=HealthServicer)
    port: int = 0
    metrics_port: int | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _health_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        tracing.setup(self.name, self.config.trace_exporter, self.config.otlp)
        default_limit = self.config.max_message_bytes
        limits: dict[str, int] = {}
        for reg in self.registrations:
            limits.update(reg.method_limits())
        # gRPC's own check uses the largest limit; the guard applies each RPC's.
        receive_limit = max([default_limit, *limits.values()])
        guard = RequestGuardInterceptor(limits, default_limit)
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(), guard]
        if self.config.tracing:
            interceptors.insert(0, tracing.server_interceptor())
        credentials = tls.server_credentials(self.config.tls)
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", receive_limit),
                ("grpc.max_send_message_length", default_limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        for reg in self.registrations:
            reg.add_to_server(reg.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [r.full_name for r in self.registrations]
        if self.config.reflection:
            reflection.enable_server_reflection(
                [
                    *names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self.server,
            )
        bind = f"{self.config.host}:{self.config.port}"
        self.port = (
            self.server.add_insecure_port(bind)
            if credentials is None
            else self.server.add_secure_port(bind, credentials)
        )
        if self.port == 0:
            raise RuntimeError(f"{self.name}: could not bind {self.config.host}:{self.config.port}")
        # Models load before the port reports SERVING.
        for servicer in self._lifecycles():
            await servicer.start()
        await self.server.start()
        self.metrics_port = metrics.start_metrics_server(self.config.metrics_port, self.config.host)
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # A servicer that can fail for good (e.g. a store that stops taking writes) reports it here.
        for servicer in self._lifecycles():
            watch = getattr(servicer, "watch_health", None)
            if watch is not None:
                watch(self._not_serving)
        log.info(
            "serving",
            extra={
                "fields": {
                    "address": self.address,
                    "metrics_port": self.metrics_port,
                    "services": names,
                    "tls": "mutual" if self.config.tls.require_client_cert else bool(credentials),
                    "reflection": self.config.reflection,
                }
            },
        )
        for hook in self.on_serving:
            await hook(self.address)

    def _not_serving(self, reason: str) -> None:
        log.error("not serving: %s", reason)
        names = ["", *(r.full_name for r in self.registrations)]
        self._health_task = asyncio.get_running_loop().create_task(self._set_not_serving(names))

    async def _set_not_serving(self, names: list[str]) -> None:
        for name in names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _lifecycles(self) -> list[Lifecycle]:
        seen: list[Any] = []
        for reg in self.registrations:
            if hasattr(reg.servicer, "start") and all(reg.servicer is not s for s in seen):
                seen.append(reg.servicer)
        return seen

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish, close models."""
        if self.server is None or self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.drain_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        for hook in self.on_draining:
            try:
                await hook()
            except Exception:  # deregistration must not block the drain
                log.exception("drain hook failed")
        log.info(
            "draining", extra={"fields": {"grace_s": grace, "delay_s": self.config.drain_delay_s}}
        )
        if self.config.drain_delay_s > 0:
            await asyncio.sleep(self.config.drain_delay_s)
        await self.server.stop(grace)
        for servicer in self._lifecycles():
            await servicer.close()
        log.info("stopped")

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()

    async def serve_until_signalled(self) -> None:
        """Start, then run until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()
