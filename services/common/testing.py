"""Helpers for tests and benchmarks: run a real service in-process on a free loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from services.common import config as cfgmod
from services.common.runner import ServiceDefinition, build_server
from services.common.server import MeshServer


@contextlib.asynccontextmanager
async def running_service(
    definition: ServiceDefinition, overrides: Mapping[str, Any] | None = None, grace: float = 1.0
) -> AsyncIterator[MeshServer]:
    """Start ``definition``'s server on 127.0.0.1:<free port> with real models; stop it after."""
    cfg: Any = cfgmod.load(definition.config_cls, environ={}, overrides=overrides or {})
    metrics_port = cfg.server.metrics_port if "metrics_port" in (overrides or {}).get("server", {}) else -1
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, host="127.0.0.1", port=0, metrics_port=metrics_port))
    server = build_server(definition, cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace)
