"""The subset of ghz's JSON configuration the load tests use, validated before a run.

Same keys, same meaning as ghz (``call``, ``host``, ``data``/``binary-file``,
``concurrency``, ``rps`` or ``load-schedule`` step/line, ``total``,
``duration``, ``timeout``), so one file drives ghz and the k6 scripts
(loadtest/k6/). ``loadtest/k6run.py`` loads a config through here first: the
suite is a safety-bounded local tool (loopback targets only, bounded count, time
and concurrency).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Hard bounds: the suite exists to exercise a local mesh, not to load anything else.
MAX_TOTAL = 100_000
MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 512
GHZ_DEFAULT_TOTAL = 200
GHZ_DEFAULT_CONCURRENCY = 50
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A configuration the suite cannot or will not run."""


def parse_duration(text: str | int | float) -> float:
    """Go duration ("10s", "1m30s", "250ms") -> seconds; bare numbers are seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ConfigError(f"not a duration: {text!r} (expected e.g. 10s, 500ms, 1m30s)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class LoadSchedule:
    """Offered load in requests/s over time; ``None`` = as fast as the workers go."""

    kind: str = "const"
    rps: float | None = None
    start: float = 0.0
    end: float = 0.0
    step: float = 0.0
    step_duration_s: float = 0.0
    max_duration_s: float = 0.0

    def rate_at(self, elapsed_s: float) -> float | None:
        if self.kind == "const":
            return self.rps
        if self.kind == "step":
            steps = int(elapsed_s // self.step_duration_s) if self.step_duration_s > 0 else 0
            rate = self.start + steps * self.step
        else:  # "line": the step is a slope in rps per second
            rate = self.start + elapsed_s * self.step
        if self.end > 0:
            rate = min(rate, self.end) if self.step >= 0 else max(rate, self.end)
        return max(rate, 0.1)


@dataclass(frozen=True)
class RunConfig:
    name: str
    call: str
    host: str
    data: list[dict[str, Any]] = field(default_factory=list)
    binary: bytes | None = None
    concurrency: int = GHZ_DEFAULT_CONCURRENCY
    total: int | None = GHZ_DEFAULT_TOTAL
    duration_s: float | None = None
    timeout_s: float = 20.0
    schedule: LoadSchedule = field(default_factory=LoadSchedule)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def method_path(self) -> str:
        """``/package.Service/Method`` as gRPC puts it on the wire."""
        call = self.call.replace("/", ".")
        service, _, method = call.rpartition(".")
        return f"/{service}/{method}"

    @property
    def full_method(self) -> str:
        return self.call.replace("/", ".")


def require_loopback(host: str) -> None:
    """Refuse any target that is not this machine's loopback interface."""
    hostname, _, port = host.rpartition(":")
    hostname = hostname.strip("[]")
    if not hostname or not port.isdigit():
        raise ConfigError(f"host {host!r} must be host:port")
    try:
        infos = socket.getaddrinfo(hostname, int(port), proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(f"host {host!r} does not resolve: {exc}") from exc
    addresses = {str(info[4][0]) for info in infos}
    outside = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if outside:
        raise ConfigError(
            f"refusing non-loopback target {host!r} (resolves to "
            f"{', '.join(sorted(outside))}); the load tests only load a local mesh"
        )


def _schedule(raw: dict[str, Any]) -> LoadSchedule:
    kind = str(raw.get("load-schedule", "const") or "const").lower()
    if kind == "const":
        rps = raw.get("rps")
        return LoadSchedule(rps=float(rps) if rps else None)
    if kind not in ("step", "line"):
        raise ConfigError(f"load-schedule {kind!r} is not supported (const, step, line)")
    if not raw.get("load-start"):
        raise ConfigError(f"load-schedule {kind} needs load-start")
    return LoadSchedule(
        kind=kind,
        start=float(raw["load-start"]),
        end=float(raw.get("load-end", 0) or 0),
        step=float(raw.get("load-step", 0) or 0),
        step_duration_s=parse_duration(raw.get("load-step-duration") or "0s")
        if kind == "step"
        else 0.0,
        max_duration_s=parse_duration(raw.get("load-max-duration") or "0s"),
    )


def from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """Validate a ghz configuration mapping (plus command-line overrides) into a RunConfig."""
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for key in ("call", "host"):
        if not raw.get(key):
            raise ConfigError(f"config needs {key!r}")
    require_loopback(str(raw["host"]))
    data = raw.get("data")
    binary = None
    if raw.get("binary-file"):
        # Relative to the working directory, as ghz resolves it.
        binary = Path(str(raw["binary-file"])).read_bytes()
    elif data is None:
        data = {}
    items = data if isinstance(data, list) else [data] if data is not None else []
    if data is not None and (not items or not all(isinstance(d, dict) for d in items)):
        raise ConfigError("data must be a JSON object or a non-empty array of objects")
    concurrency = int(raw.get("concurrency") or GHZ_DEFAULT_CONCURRENCY)
    schedule = _schedule(raw)
    # As in ghz: a duration (or a schedule's max duration) wins over the total.
    duration = parse_duration(raw["duration"]) if raw.get("duration") else None
    if schedule.max_duration_s and (duration is None or schedule.max_duration_s < duration):
        duration = schedule.max_duration_s
    total = None if duration else int(raw.get("total") or GHZ_DEFAULT_TOTAL)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency {concurrency} outside 1..{MAX_CONCURRENCY}")
    if total is not None and not 1 <= total <= MAX_TOTAL:
        raise ConfigError(f"total {total} outside 1..{MAX_TOTAL}")
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise ConfigError(f"duration {duration}s outside (0, {MAX_DURATION_S:.0f}s]")
    return RunConfig(
        name=str(raw.get("name") or raw["call"]),
        call=str(raw["call"]),
        host=str(raw["host"]),
        data=items,
        binary=binary,
        concurrency=concurrency,
        total=total,
        duration_s=duration,
        timeout_s=parse_duration(raw.get("timeout") or "20s"),
        schedule=schedule,
        source={k: v for k, v in raw.items() if k != "data"},
    )


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return from_dict(raw, overrides)
