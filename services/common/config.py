"""Configuration from defaults, an optional YAML file, the environment and flags.

Precedence (lowest to highest): dataclass defaults < YAML file (``--config``)
< environment (``VISIONMESH_<SECTION>__<KEY>``, ``__`` separates nesting)
< flags (``--set section.key=value`` and a few named flags).
Every service describes its settings as nested dataclasses; this module
only merges and coerces them.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
ENV_PREFIX = "VISIONMESH_"


class ConfigError(ValueError):
    """A setting that does not exist or does not parse."""


@dataclasses.dataclass
class BatcherConfig:
    """A service's explicit changes to a model's batching policy.

    The policy itself lives with the model, in the ``dynamic_batching`` section
    of its repository ``config.yaml`` (``BatchingPolicy``); ``None`` keeps the
    repository's value. An override the model cannot run (a batch larger than
    its ``max_batch_size``) stops the start with a ``ConfigError``.
    """

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    instances: int | None = None


@dataclasses.dataclass
class EngineConfig:
    # "onnxruntime" (default, CPU), "torch" or "tensorrt".
    backend: str = "onnxruntime"
    device: str = "cpu"
    # ONNX Runtime intra-op threads per instance (0 = library default).
    threads: int = 0
    # Whether ONNX Runtime's idle intra-op threads spin-wait for work. Spinning
    # saves microseconds per run on a core of its own, but a mesh runs several
    # models and processes on few cores, where spinning threads burn the CPU the
    # busy ones need (docs/reliability.md, "Overload"). Off unless asked for.
    spin_wait: bool = False
    # ONNX Runtime's CPU memory arena (faster than malloc per run), and how often
    # (seconds; 0 = never) a run also shrinks it when the model's input sizes vary
    # beyond the batch (OCR's, the face detector's): such an arena fragments and
    # keeps growing. A fixed-shape model's arena is kept at its largest batch's
    # working set, which later batches reuse. See services/common/memory.py.
    cpu_mem_arena: bool = True
    arena_shrink_period_s: float = 10.0
    # "fp32" or "fp16" (GPU backends).
    precision: str = "fp32"
    cuda_graphs: bool = False
    # GPU backends (see docs/gpu.md). Batch sizes that get their own CUDA graph
    # (torch) -- empty = powers of two up to the model's max_batch_size.
    batch_buckets: list[int] = dataclasses.field(default_factory=list)
    # TensorRT optimisation profile "opt" batch (0 = min(32, max_batch_size)).
    opt_batch_size: int = 0
    # TensorRT builder workspace limit, MiB.
    workspace_mb: int = 1024
    # Where TensorRT plans are cached ("" = next to the model's ONNX).
    plan_cache_dir: str = ""
    # fp16 is kept only while its outputs stay within this fraction of the
    # fp32 outputs' largest magnitude on a probe batch; otherwise fp32.
    fp16_tolerance: float = 0.02


@dataclasses.dataclass
class ModelConfig:
    """How one model of a service runs: which repository entry, engine, batcher."""

    name: str = ""
    version: int = 1
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    batcher: BatcherConfig = dataclasses.field(default_factory=BatcherConfig)


@dataclasses.dataclass
class OtlpConfig:
    """Where ``trace_exporter: otlp`` sends spans (OTLP over gRPC, e.g. an OpenTelemetry
    Collector)."""

    endpoint: str = "127.0.0.1:4317"
    # Sent with every export, e.g. {"authorization": "Bearer ..."}.
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # Plaintext (a collector on the same host or pod); otherwise TLS with the files below.
    insecure: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_s: float = 10.0
    # Spans are exported in batches at least this often (and at exit).
    flush_interval_s: float = 1.0


@dataclasses.dataclass
class ImageLimitsConfig:
    """What one request may make a server decode; checked on headers, before any pixel is
    allocated."""

    # Encoded bytes of one image.
    max_bytes: int = 32 * 1024 * 1024
    # Pixels of one image (decompression-bomb guard) and the longest side.
    max_pixels: int = 50_000_000
    max_side: int = 20_000
    # Decoded pixels of one request, every frame together (frames x width x height).
    max_request_pixels: int = 64_000_000


@dataclasses.dataclass
class ServerTlsConfig:
    """TLS of a server: off while cert_file is empty."""

    # PEM certificate chain and private key of this server.
    cert_file: str = ""
    key_file: str = ""
    # PEM bundle of the CAs whose client certificates are trusted (mutual TLS).
    ca_file: str = ""
    # Refuse clients without a certificate signed by ca_file.
    require_client_cert: bool = False


@dataclasses.dataclass
class ClientTlsConfig:
    """TLS of a client channel: off while ca_file is empty (plaintext)."""

    # PEM bundle of the CAs that sign the servers' certificates.
    ca_file: str = ""
    # This client's certificate and key, for servers that require one (mutual TLS).
    cert_file: str = ""
    key_file: str = ""
    # Name to check the server certificate against instead of the target's host.
    server_name: str = ""


@dataclasses.dataclass
class ClientConfig:
    tls: ClientTlsConfig = dataclasses.field(default_factory=ClientTlsConfig)


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    # Prometheus /metrics port (0 = pick a free one, -1 = off).
    metrics_port: int = -1
    # Seconds in-flight calls get to finish on SIGTERM.
    drain_grace_s: float = 10.0
    # Seconds between reporting NOT_SERVING and refusing new calls, so health
    # watchers (gateways, load balancers) move traffic away first.
    drain_delay_s: float = 0.0
    # Largest request message of an RPC whose service sets no limit of its own, and
    # of every response. Services set per-RPC limits from what the RPC carries.
    max_message_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = True
    # "none", "console", "otlp" (settings in otlp) or "memory" (tests).
    trace_exporter: str = "none"
    otlp: OtlpConfig = dataclasses.field(default_factory=OtlpConfig)
    # gRPC tracing interceptors (context propagation + spans); off saves their per-call cost.
    tracing: bool = True
    # Register with Consul when set (or from CONSUL_HTTP_ADDR).
    consul_addr: str = ""
    # Address other hosts use to reach us (Consul registration); defaults to host:port.
    advertise_addr: str = ""
    # Server reflection lists every RPC and message to anyone who connects: off
    # outside the local mesh (``visionmesh up`` turns it on).
    reflection: bool = False
    tls: ServerTlsConfig = dataclasses.field(default_factory=ServerTlsConfig)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, target: Any, where: str) -> Any:
    """Turn a YAML/env/flag value into the dataclass field's declared type."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        # Optional settings: null stays None, anything else takes the other type.
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(target) if a is not type(None)]
        return coerce(value, inner, where)
    if dataclasses.is_dataclass(target):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return merge(target(), value, where)  # type: ignore[call-arg,operator]
    if target is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean")
    if target in (int, float, str):
        try:
            return target(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {value!r} is not a {target.__name__}") from exc
    if origin in (list, Sequence, tuple):
        (item_type,) = typing.get_args(target)[:1] or (Any,)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        return [coerce(v, item_type, f"{where}[]") if item_type is not Any else v for v in value]
    if origin is dict:
        key_t, val_t = typing.get_args(target)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(k, key_t, where): coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    return value


def merge(obj: T, values: Mapping[str, Any], where: str = "") -> T:
    """Return ``obj`` with ``values`` (a nested mapping) applied, types coerced."""
    hints = _type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        path = f"{where}.{key}" if where else key
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown setting {path!r} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = merge(current, value, path)
        elif (
            isinstance(current, dict)
            and isinstance(value, Mapping)
            and typing.get_origin(hints[key]) is dict
        ):
            _, val_t = typing.get_args(hints[key])
            merged = dict(current)
            for k, v in value.items():
                if dataclasses.is_dataclass(val_t) and k in merged and isinstance(v, Mapping):
                    merged[k] = merge(merged[k], v, f"{path}.{k}")
                else:
                    merged[k] = coerce(v, val_t, f"{path}.{k}")
            changes[key] = merged
        else:
            changes[key] = coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def _nest(dotted: Mapping[str, Any], sep: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = [p for p in key.split(sep) if p]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def from_env(environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """``VISIONMESH_SERVER__PORT=5001`` -> ``{"server": {"port": "5001"}}``."""
    picked = {k[len(prefix) :].lower(): v for k, v in environ.items() if k.startswith(prefix)}
    return _nest(picked, "__")


def from_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``["server.port=5001"]`` -> ``{"server": {"port": "5001"}}``; values parse as YAML."""
    pairs: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        pairs[key.strip()] = yaml.safe_load(raw) if raw else ""
    return _nest(pairs, ".")


def load(
    cls: type[T],
    *,
    yaml_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    assignments: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults < YAML < environment < ``--set`` < explicit overrides."""
    cfg = cls()
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top")
        cfg = merge(cfg, data)
    cfg = merge(cfg, _filter_known(cls, from_env(os.environ if environ is None else environ)))
    cfg = merge(cfg, from_assignments(assignments))
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg


def _filter_known(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    # The environment is shared by every service: ignore sections this one lacks.
    hints = _type_hints(cls)
    return {k: v for k, v in tree.items() if k in hints}
