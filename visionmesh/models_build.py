"""``visionmesh models build``: fill the model repository from installed wheels.

Each feature contributes ``ModelExport`` entries (``services/<feature>/export.py``,
``MODELS``; the module is named in the feature table).
A model is rebuilt only when its files no longer match its provenance record
or its exporter's revision changed, so re-running is fast and nothing touches
the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from services.common.exports import ModelExport
from services.common.repository import default_root, verify_entry, write_entry
from visionmesh import features

log = logging.getLogger(__name__)


def export_modules() -> list[str]:
    """Modules holding each feature's exports (the feature table's), without repeats."""
    return list(dict.fromkeys(spec.export_module for spec in features.all_features()))


def all_exports() -> list[ModelExport]:
    exports: list[ModelExport] = []
    for module_name in export_modules():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that service is not in this checkout
            raise
        exports.extend(module.MODELS)
    return exports


def _batching_section(export: ModelExport, engine_max_batch: int) -> dict[str, Any] | None:
    if export.batching is None:
        return None
    return dataclasses.asdict(export.batching.validate(export.name, engine_max_batch))


def _refresh_batching(path: Path, export: ModelExport) -> bool:
    """Rewrite config.yaml's dynamic_batching when the export's policy changed; True if it did."""
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    section = _batching_section(export, int(config.get("max_batch_size", 0)))
    if config.get("dynamic_batching") == section:
        return False
    config.pop("dynamic_batching", None)
    if section is not None:
        config["dynamic_batching"] = section
    staged = config_file.with_name(".config.yaml.tmp")
    staged.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    staged.replace(config_file)  # atomic: a loading service sees the old or the new file
    return True


def _up_to_date(path: Path, export: ModelExport) -> bool:
    if not verify_entry(path):
        return False
    record = json.loads((path / "provenance.json").read_text())
    return bool(record.get("export_revision") == export.revision)


def build(root: Path | None = None, only: Iterable[str] = (), force: bool = False) -> list[str]:
    """Build every (or each named) model; returns the names actually (re)built."""
    root = root or default_root()
    wanted = set(only)
    built = []
    for export in all_exports():
        if wanted and export.name not in wanted:
            continue
        target = root / export.name / str(export.version)
        if not force and _up_to_date(target, export):
            if _refresh_batching(target, export):
                print(f"updated the batching policy of model {export.name} v{export.version}")
            else:
                log.info("model %s v%d is up to date", export.name, export.version)
            continue
        start = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{export.name}-") as tmp:
            staging = Path(tmp) / "out"
            staging.mkdir()
            config, provenance = export.build(staging)
            config = {"name": export.name, "version": export.version, **config}
            section = _batching_section(export, int(config.get("max_batch_size", 0)))
            if section is not None:
                config["dynamic_batching"] = section
            write_entry(staging, config, {**provenance, "export_revision": export.revision})
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
        print(
            f"built model {export.name} v{export.version} in "
            f"{time.perf_counter() - start:.1f}s -> {target}"
        )
        built.append(export.name)
    return built
