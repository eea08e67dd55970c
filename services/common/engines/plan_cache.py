"""The TensorRT plan cache: built once per GPU model, TensorRT version and precision.

A plan only runs on the GPU model and TensorRT version that built it, so
those are in the file name; so are the precision, the ONNX file's digest and
the optimisation profile, so a re-exported model or a changed profile never
picks up a stale plan. Several engine instances start at once: a file lock
makes one build while the others wait and then read its plan.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock


@dataclass(frozen=True)
class PlanKey:
    gpu_name: str
    trt_version: str
    precision: str
    onnx_sha256: str
    profile: str

    def filename(self, stem: str = "model") -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-") or "gpu"
        trt = re.sub(r"[^0-9.]+", "", self.trt_version) or "unknown"
        digest = hashlib.sha256(f"{self.onnx_sha256}|{self.profile}".encode()).hexdigest()[:12]
        return f"{stem}.{gpu}.trt{trt}.{self.precision}.{digest}.plan"


def plan_path(onnx_path: Path, key: PlanKey, cache_dir: str = "") -> Path:
    """Next to the ONNX by default; ``cache_dir`` for read-only model repositories."""
    folder = Path(cache_dir) if cache_dir else onnx_path.parent
    return folder / key.filename(onnx_path.stem)


def load_or_build(path: Path, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The cached plan at ``path``, building (and atomically writing) it when absent.

    Returns ``(plan, built)``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and path.stat().st_size > 0:
            return path.read_bytes(), False
        plan = build()
        # Write-then-rename: a crash mid-write never leaves a truncated plan behind.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(plan)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return plan, True
