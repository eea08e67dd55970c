"""Layering rules, checked on the source: the transport stops at the servicer.

Pipelines, ``ServedModel``, the batcher and every other module below the
servicers take a ``Deadline`` and raise ``ServiceError``s; only the server
layer and each service's servicer and entry point import gRPC.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"
# services/common modules that are the server layer (tracing: the gRPC interceptors and
# the OTLP exporter's channel credentials).
SERVER_LAYER = {"server.py", "interceptors.py", "rpc.py", "tls.py", "tracing.py"}
# Per service folder: the servicer and the entry point.
SERVICE_TRANSPORT = {"servicer.py", "main.py", "__main__.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_transport(module: str) -> bool:
    top = module.split(".")[0]
    return top.startswith("grpc") or module.endswith("_pb2_grpc")


def _transport_imports(path: Path) -> list[str]:
    return sorted(m for m in _imports(path) if _is_transport(m))


def _modules_below_the_servicer() -> list[Path]:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        rel = path.relative_to(SERVICES)
        allowed = SERVER_LAYER if rel.parts[0] == "common" else SERVICE_TRANSPORT
        if len(rel.parts) == 2 and rel.name in allowed:
            continue
        found.append(path)
    return found


@pytest.mark.parametrize(
    "path", _modules_below_the_servicer(), ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_grpc_below_the_servicer(path: Path) -> None:
    assert _transport_imports(path) == [], (
        f"{path.relative_to(ROOT)} imports the transport; take a Deadline "
        "(services/common/deadline.py) and raise ServiceError instead"
    )


def test_the_scan_sees_grpc_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "import numpy\nimport grpc\nfrom visionmesh.v1 import face_pb2_grpc\n"
        "def f():\n    from grpc import aio\n"
    )
    assert _transport_imports(sample) == [
        "grpc",
        "grpc.aio",
        "visionmesh.v1.face_pb2_grpc",
    ]


def test_services_do_not_import_each_other() -> None:
    for path in SERVICES.rglob("*.py"):
        own = path.relative_to(SERVICES).parts[0]
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "services" and len(parts) > 1:
                assert parts[1] in (own, "common"), f"{path.relative_to(ROOT)} imports {module}"
