"""Helpers shared by the tests (and the benchmarks that reuse them).

Real servers in-process on free loopback ports with real models, encoded
images, drawn text for OCR, random engine inputs. Nothing here is imported by
the production packages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from services.common import config as cfgmod
from services.common.engines.base import Engine
from services.common.net import free_port
from services.common.repository import default_root
from services.common.runner import ServiceDefinition, build_server
from services.common.server import MeshServer
from visionmesh.mesh import LocalMesh

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "DYNAMIC_DIM",
    "OCR_MODELS",
    "ROOT",
    "draw_lines",
    "encode",
    "ensure_ocr_models",
    "free_port",
    "random_inputs",
    "repository_models",
    "running_service",
]


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kwargs: object) -> bytes:
    """Pixels as an encoded image file (JPEG unless ``fmt`` says otherwise)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kwargs)
    return buf.getvalue()


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


# Size of a dynamic non-batch dim when config.yaml gives no range (a multiple of 32 suits
# detectors).
DYNAMIC_DIM = 64


def repository_models() -> list[str]:
    """Names of the built models that have an ONNX file (version 1)."""
    root = default_root()
    return (
        sorted(p.parent.parent.name for p in root.glob("*/1/model.onnx")) if root.is_dir() else []
    )


def random_inputs(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [-1, 1) inputs of every declared input, dynamic dims at their configured maximum (or
    DYNAMIC_DIM)."""
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


OCR_MODELS = ("ppocr_det", "ppocr_cls", "ppocr_rec")


def ensure_ocr_models() -> Path:
    """Build the three OCR entries when missing (a file copy from the rapidocr wheel; no
    network)."""
    from visionmesh.models_build import build

    build(only=OCR_MODELS)
    return default_root()


def draw_lines(
    lines: list[str], size: int = 32, width: int = 640, font: str = "NotoSansCJK-Regular.ttc"
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Dark text on white paper, one line under the other; returns the image and each line's box."""
    from tools.ocr_render import FONT_DIR, SC_FACE

    face = ImageFont.truetype(str(FONT_DIR / font), size, index=SC_FACE)
    height = 30 + len(lines) * int(size * 2)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for i, text in enumerate(lines):
        xy = (30, 20 + i * int(size * 2))
        draw.text(xy, text, font=face, fill=(20, 20, 20))
        boxes.append(tuple(int(v) for v in draw.textbbox(xy, text, font=face)))
    return np.asarray(canvas), boxes  # type: ignore[return-value]


@contextlib.contextmanager
def classify_hash_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """A local mesh of classify + hash (hash data in a temporary folder) for failure tests.

    Stopped processes (SIGSTOP tests) are resumed first, so stopping never waits on one.
    """
    data_dir = tmp_path_factory.mktemp("hash-data")
    mesh = LocalMesh(
        services=["classify", "hash"],
        log_dir=tmp_path_factory.mktemp("logs"),
        extra_args={"hash": ["--set", f"storage.data_dir={data_dir}"]},
    )
    try:
        mesh.start()
        assert not mesh.failed, mesh.failed
        yield mesh
    finally:
        for proc in mesh.processes.values():
            if proc.alive():
                os.killpg(proc.process.pid, signal.SIGCONT)
        mesh.stop()
