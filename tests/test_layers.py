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


def test_services_never_import_the_tools_that_import_them() -> None:
    """No cycle: services use the generated protos and the feature table, never the builder/CLI."""
    allowed = ("visionmesh.v1", "visionmesh.features")
    for path in SERVICES.rglob("*.py"):
        for module in _imports(path):
            # ("from visionmesh import features" lists "visionmesh" and "visionmesh.features")
            if module.split(".")[0] in ("visionmesh", "gateway", "tests", "bench", "tools") and (
                module != "visionmesh"
            ):
                assert module.startswith(allowed), f"{path.relative_to(ROOT)} imports {module}"


def test_engine_backends_share_helpers_not_each_other() -> None:
    backends = {"onnxruntime_backend", "torch_backend", "tensorrt_backend"}
    for name in backends:
        path = SERVICES / "common" / "engines" / f"{name}.py"
        siblings = {m.rsplit(".", 1)[-1] for m in _imports(path)} & (backends - {name})
        assert not siblings, f"{name} imports {siblings}; shared pieces go to engines/ helpers"


def test_one_entry_point_per_service() -> None:
    """``python -m services.<name>`` (``__main__.py``) and ``visionmesh serve``; main.py only
    defines."""
    folders = [p for p in SERVICES.iterdir() if (p / "main.py").is_file()]
    for folder in [*folders, ROOT / "gateway"]:
        assert (folder / "__main__.py").is_file(), folder
        assert "__main__" not in (folder / "main.py").read_text(), folder / "main.py"


def test_production_packages_hold_no_test_code() -> None:
    for package in ("services", "gateway", "visionmesh"):
        for path in (ROOT / package).rglob("*.py"):
            assert path.name not in ("testing.py", "conftest.py"), path
            tests_imports = [m for m in _imports(path) if m.split(".")[0] == "tests"]
            assert not tests_imports, f"{path.relative_to(ROOT)} imports {tests_imports}"


def test_the_repository_refers_to_nothing_outside_it() -> None:
    """A clone has only itself: no links to folders beside it."""
    roots = ["README.md", "Makefile", "requirements.txt", "pyproject.toml"]
    folders = ["docs", "services", "gateway", "visionmesh", "tests", "tools", "bench", "k8s"]
    paths = [ROOT / r for r in roots] + [
        p
        for folder in folders
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
        and p.suffix in (".md", ".py", ".yaml", ".txt", ".sh", ".toml")
        and "/v1/" not in str(p)
    ]
    outside = "../" + "shared"  # spelled apart so this test does not find itself
    for path in paths:
        if path.is_file():
            assert outside not in path.read_text(errors="replace"), path.relative_to(ROOT)
