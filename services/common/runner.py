"""Command-line entry for one service: flags + env + YAML -> config -> MeshServer -> serve.

Every service module exposes a ``ServiceDefinition``; ``visionmesh serve NAME``
and ``python -m services.NAME`` both end up in ``run_service``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.common import config as cfgmod
from services.common import logs, memory
from services.common.config import ConfigError, ModelConfig, ServerConfig
from services.common.server import MeshServer, Registration


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    config_cls: type
    # config -> the gRPC services to host (servicers own their models' lifecycle).
    build: Callable[[Any], list[Registration]]
    default_port: int


def model_configs(cfg: Any) -> list[ModelConfig]:
    """Every ModelConfig field of a service config (top level)."""
    return [
        getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if isinstance(getattr(cfg, f.name), ModelConfig)
    ]


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with settings (see docs/configuration.md)")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. server.port=6000",
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (0 = free port, -1 = off)"
    )
    parser.add_argument(
        "--backend",
        choices=["onnxruntime", "torch", "tensorrt"],
        help="engine backend for every model",
    )
    parser.add_argument("--device", help="engine device for every model, e.g. cpu or cuda:0")
    parser.add_argument(
        "--precision", choices=["fp32", "fp16"], help="engine precision for every model"
    )
    parser.add_argument(
        "--engine-threads",
        dest="threads",
        type=int,
        help="intra-op threads per engine instance for every model (0 = library default)",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")


def resolve_config(definition: ServiceDefinition, args: argparse.Namespace) -> Any:
    cfg: Any = cfgmod.load(
        definition.config_cls, yaml_path=args.config, assignments=args.assignments
    )
    server: ServerConfig = cfg.server
    if server.port == 0:
        server = dataclasses.replace(server, port=definition.default_port)
    for flag, key in (
        ("host", "host"),
        ("port", "port"),
        ("metrics_port", "metrics_port"),
        ("log_level", "log_level"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            server = dataclasses.replace(server, **{key: value})
    cfg = dataclasses.replace(cfg, server=server)
    engine_overrides = {
        k: getattr(args, k)
        for k in ("backend", "device", "precision", "threads")
        if getattr(args, k, None) is not None
    }
    if engine_overrides:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, ModelConfig):
                cfg = dataclasses.replace(
                    cfg,
                    **{
                        f.name: dataclasses.replace(
                            value, engine=dataclasses.replace(value.engine, **engine_overrides)
                        )
                    },
                )
    return cfg


def build_server(definition: ServiceDefinition, cfg: Any) -> MeshServer:
    server = MeshServer(definition.name, cfg.server, definition.build(cfg))
    # Consul registration (when configured) hooks in here; see services/common/consul.py.
    try:
        from services.common import consul
    except ImportError:  # pragma: no cover - consul support is optional
        return server
    consul.attach(server, definition.name)
    return server


async def _serve(definition: ServiceDefinition, cfg: Any) -> None:
    server = build_server(definition, cfg)
    trimmer = asyncio.create_task(memory.trim_when_quiet(), name="malloc-trim")
    try:
        await server.serve_until_signalled()
    finally:
        trimmer.cancel()


def run_service(definition: ServiceDefinition, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"visionmesh serve {definition.name}",
        description=f"Run the {definition.name} service.",
    )
    add_common_flags(parser)
    args = parser.parse_args(argv)
    # Before any thread exists: arenas are created per thread (see services/common/memory.py).
    memory.tune_allocator()
    try:
        cfg = resolve_config(definition, args)
        logs.setup(definition.name, cfg.server.log_level, cfg.server.log_json)
        asyncio.run(_serve(definition, cfg))
    except ConfigError as exc:
        # A setting the service cannot run with: say which, no traceback.
        parser.exit(2, f"{parser.prog}: configuration error: {exc}\n")
