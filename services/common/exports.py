"""What a service declares to put a model into the repository: ``ModelExport``s.

Each ``services/<feature>/export.py`` lists its models in ``MODELS``;
``visionmesh models build`` (``visionmesh/models_build.py``) runs them into
the repository (``services/common/repository.py``). This module sits below
both, so exports never import the builder that imports them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.repository import BatchingPolicy


@dataclass(frozen=True)
class ModelExport:
    name: str
    version: int
    # Bump when the exporter's output changes, so cached builds are redone.
    revision: int
    # Writes model files into the folder; returns (config.yaml dict, provenance dict).
    build: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]
    # The model's batching policy: config.yaml's dynamic_batching section (None = not
    # served behind a batcher). Changing it rewrites config.yaml without re-exporting.
    batching: BatchingPolicy | None = BatchingPolicy()


def package_provenance(*dists: str) -> dict[str, Any]:
    """Name, version and licence of the wheels a model came from."""
    sources = []
    for dist in dists:
        meta = importlib.metadata.metadata(dist)
        licence = meta["License-Expression"] or meta["License"] or "see package"
        sources.append(
            {"package": dist, "version": importlib.metadata.version(dist), "license": licence}
        )
    return {"sources": sources}
