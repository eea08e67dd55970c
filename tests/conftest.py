"""Shared fixtures and the slow-test switch; helpers live in tests/support.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from tests.support import ROOT, encode

os.environ.setdefault("VISIONMESH_MODEL_REPOSITORY", str(ROOT / "model_repository"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption(
        "--run-infra",
        action="store_true",
        help="also run tests marked infra/container (real Prometheus, OTLP, k6, podman)",
    )
    parser.addoption(
        "--run-milvus",
        action="store_true",
        help="also run tests marked milvus (a real Milvus from make setup-milvus)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = []
    if not config.getoption("--run-slow"):
        skips.append(("slow", "slow test: run with --run-slow (make test-all)"))
    if not config.getoption("--run-infra"):
        reason = "infrastructure test: run with --run-infra (make test-infra, .ci/run)"
        skips += [("infra", reason), ("container", reason)]
    if not config.getoption("--run-milvus"):
        skips.append(("milvus", "Milvus test: run with --run-milvus (make test-milvus, .ci/run)"))
    for item in items:
        for marker, reason in skips:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea()


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea: np.ndarray) -> bytes:
    return encode(chelsea)


@pytest.fixture(scope="module")
async def detect_stub() -> AsyncIterator[Any]:
    """A DetectionService stub on a detection service with real models (one per test module)."""
    import grpc

    from services.detect.main import DEFINITION
    from tests.support import running_service
    from visionmesh.v1 import detect_pb2_grpc

    async with (
        running_service(DEFINITION) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        yield detect_pb2_grpc.DetectionServiceStub(channel)
