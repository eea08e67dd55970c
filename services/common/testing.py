"""Helpers for tests and benchmarks: run a real service in-process on a free loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from services.common import config as cfgmod
from services.common.engines.base import Engine
from services.common.repository import default_root
from services.common.runner import ServiceDefinition, build_server
from services.common.server import MeshServer


@contextlib.asynccontextmanager
async def running_service(
    definition: ServiceDefinition, overrides: Mapping[str, Any] | None = None, grace: float = 1.0
) -> AsyncIterator[MeshServer]:
    """Start ``definition``'s server on 127.0.0.1:<free port> with real models; stop it after."""
    cfg: Any = cfgmod.load(definition.config_cls, environ={}, overrides=overrides or {})
    metrics_port = (
        cfg.server.metrics_port if "metrics_port" in (overrides or {}).get("server", {}) else -1
    )
    cfg = dataclasses.replace(
        cfg,
        server=dataclasses.replace(cfg.server, host="127.0.0.1", port=0, metrics_port=metrics_port),
    )
    server = build_server(definition, cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace)


# Size of a dynamic non-batch dim when config.yaml gives no range (a multiple of 32 suits detectors).
DYNAMIC_DIM = 64


def repository_models() -> list[str]:
    """Names of the built models that have an ONNX file (version 1)."""
    root = default_root()
    return (
        sorted(p.parent.parent.name for p in root.glob("*/1/model.onnx")) if root.is_dir() else []
    )


def random_inputs(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [-1, 1) inputs of every declared input, dynamic dims at their configured maximum (or DYNAMIC_DIM)."""
    rng = np.random.default_rng(seed)
    ranges = engine.entry.extra.get("dynamic_dims") or {}
    feeds = {}
    for spec in engine.inputs:
        dims = [batch] + [
            d if d >= 0 else int((ranges.get(spec.name) or {}).get(axis, [0, DYNAMIC_DIM])[1])
            for axis, d in enumerate(spec.shape[1:], 1)
        ]
        feeds[spec.name] = rng.uniform(-1, 1, dims).astype(spec.dtype)
    return feeds
