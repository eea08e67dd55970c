"""The model repository: ``<root>/<model>/<version>/{model.onnx, config.yaml, provenance.json}``.

Services load only from here. ``visionmesh models build`` fills it from the
installed wheels (see ``visionmesh/models_build.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.config import BatcherConfig, ConfigError

DEFAULT_ROOT = "model_repository"


def default_root() -> Path:
    return Path(os.environ.get("VISIONMESH_MODEL_REPOSITORY", DEFAULT_ROOT)).resolve()


class ModelNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    # -1 marks a dynamic dimension (the batch is always dim 0).
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BatchingPolicy:
    """How a model is batched: its ``config.yaml``'s ``dynamic_batching`` section (as Triton's
    ``config.pbtxt``). Services change it only by explicit overrides (``BatcherConfig``)."""

    # Largest batch the batcher forms (at most the model's max_batch_size).
    max_batch_size: int = 32
    # The oldest queued request waits at most this long for company.
    max_queue_delay_us: int = 2000
    # Queued requests past this get RESOURCE_EXHAUSTED.
    max_queue_size: int = 512
    # Engine instances draining the one queue.
    instances: int = 1

    def validate(self, model: str, engine_max_batch: int) -> BatchingPolicy:
        """This policy, or a ``ConfigError`` naming what the model cannot run."""
        for key in ("max_batch_size", "max_queue_size", "instances"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"model {model}: batching {key} must be >= 1, got {getattr(self, key)}"
                )
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"model {model}: batching max_queue_delay_us must be >= 0")
        if engine_max_batch and self.max_batch_size > engine_max_batch:
            raise ConfigError(
                f"model {model}: batching max_batch_size {self.max_batch_size} is over the "
                f"{engine_max_batch} the model takes (max_batch_size in its config.yaml)"
            )
        return self

    def with_overrides(self, overrides: BatcherConfig) -> BatchingPolicy:
        """The policy with a service's explicit overrides applied (None = keep)."""
        changes = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
        return dataclasses.replace(self, **changes)


@dataclass
class ModelEntry:
    """A model version in the repository, as its config.yaml describes it."""

    name: str
    version: int
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # None for entries that are not served behind a batcher (e.g. the hash projection).
    batching: BatchingPolicy | None = None

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def file(self, name: str) -> Path:
        return self.path / name

    def batching_policy(self, overrides: BatcherConfig | None = None) -> BatchingPolicy:
        """The repository's batching policy with a service's explicit overrides, validated."""
        if self.batching is None:
            raise ConfigError(
                f"model {self.name} v{self.version} has no dynamic_batching section in its "
                "config.yaml; rebuild the repository with `visionmesh models build`"
            )
        policy = self.batching.with_overrides(overrides or BatcherConfig())
        return policy.validate(self.name, self.max_batch_size)

    def labels(self) -> list[str]:
        labels_file = self.extra.get("labels")
        if not labels_file:
            raise ModelNotFound(f"model {self.name} has no labels file")
        return self.file(labels_file).read_text(encoding="utf-8").splitlines()


def _specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
    return [
        TensorSpec(i["name"], i.get("dtype", "float32"), tuple(int(d) for d in i["shape"]))
        for i in items
    ]


def load_entry(name: str, version: int = 1, root: Path | None = None) -> ModelEntry:
    root = root or default_root()
    path = root / name / str(version)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise ModelNotFound(
            f"model {name!r} version {version} is not in the repository at {root}; run "
            "`visionmesh models build`"
        )
    cfg = yaml.safe_load(cfg_file.read_text())
    known = {
        "name",
        "version",
        "inputs",
        "outputs",
        "max_batch_size",
        "preprocessing",
        "dynamic_batching",
    }
    batching = cfg.get("dynamic_batching")
    return ModelEntry(
        name=cfg["name"],
        version=int(cfg["version"]),
        path=path,
        inputs=_specs(cfg["inputs"]),
        outputs=_specs(cfg["outputs"]),
        max_batch_size=int(cfg.get("max_batch_size", 0)),
        preprocessing=dict(cfg.get("preprocessing") or {}),
        extra={k: v for k, v in cfg.items() if k not in known},
        batching=None if batching is None else _policy(name, batching),
    )


def _policy(model: str, section: Any) -> BatchingPolicy:
    fields = {f.name for f in dataclasses.fields(BatchingPolicy)}
    if not isinstance(section, dict) or not set(section) <= fields:
        raise ConfigError(
            f"model {model}: dynamic_batching must be a mapping of {', '.join(sorted(fields))}"
        )
    return BatchingPolicy(**{k: int(v) for k, v in section.items()})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_entry(
    path: Path,
    config: dict[str, Any],
    provenance: dict[str, Any],
) -> None:
    """Write config.yaml and provenance.json (with every file's sha256) for a built model."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name not in ("provenance.json", "config.yaml")
    )
    record = dict(provenance)
    record["files"] = {p.name: sha256_file(p) for p in files}
    (path / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def verify_entry(path: Path) -> bool:
    """True when every file listed in provenance.json is present with its recorded sha256."""
    record_file = path / "provenance.json"
    if not record_file.is_file() or not (path / "config.yaml").is_file():
        return False
    record = json.loads(record_file.read_text())
    return all(
        (path / name).is_file() and sha256_file(path / name) == digest
        for name, digest in record.get("files", {}).items()
    )
