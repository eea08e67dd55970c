"""The model repository: ``<root>/<model>/<version>/{model.onnx, config.yaml, provenance.json}``.

Services load only from here. ``visionmesh models build`` fills it from the
installed wheels (see ``visionmesh/models_build.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def file(self, name: str) -> Path:
        return self.path / name

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
            f"model {name!r} version {version} is not in the repository at {root}; run `visionmesh models build`"
        )
    cfg = yaml.safe_load(cfg_file.read_text())
    known = {"name", "version", "inputs", "outputs", "max_batch_size", "preprocessing"}
    return ModelEntry(
        name=cfg["name"],
        version=int(cfg["version"]),
        path=path,
        inputs=_specs(cfg["inputs"]),
        outputs=_specs(cfg["outputs"]),
        max_batch_size=int(cfg.get("max_batch_size", 0)),
        preprocessing=dict(cfg.get("preprocessing") or {}),
        extra={k: v for k, v in cfg.items() if k not in known},
    )


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
