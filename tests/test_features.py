"""The feature table is the one place a feature is written: every consumer reads it."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.config import GatewayConfig
from gateway.discovery import StaticResolver
from gateway.servicer import GatewayServicer, requested_features
from services.common import config as cfgmod
from services.common.runner import model_configs
from visionmesh import client, features, models_build, registry
from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2, gateway_pb2

ROOT = Path(__file__).resolve().parent.parent

# A feature that exists only in this test: its own enum value, service name and port,
# answered by a tiny ClassifyService that echoes the image size as a tag.
DUMMY = dataclasses.replace(
    features.CLASSIFY,
    name="echo",
    enum=99,
    default_port=59999,
    models=(),
    export_module="tests.echo_export",
    service_module="tests.echo_main",
)


class EchoServicer(classify_pb2_grpc.ClassifyServiceServicer):
    async def Classify(
        self, request: classify_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classify_pb2.ClassifyResponse:
        raw = request.image.raw
        tag = common_pb2.Tag(name=f"echo/{raw.width}x{raw.height}", score=0.5, source="echo")
        return classify_pb2.ClassifyResponse(tags=[tag])


@pytest.fixture
def dummy_feature() -> Iterator[features.FeatureSpec]:
    features.register(DUMMY)
    try:
        yield DUMMY
    finally:
        features.unregister(DUMMY.name)


def test_a_registered_feature_is_seen_by_client_registry_config_and_model_build(
    dummy_feature: features.FeatureSpec,
) -> None:
    assert client.parse_features("classify,echo") == [common_pb2.FEATURE_CLASSIFY, 99]
    assert client.feature_name(99) == "echo"
    assert registry.feature_services()["echo"] == "echo"
    assert registry.service_modules()["echo"] == "tests.echo_main"
    assert list(registry.service_modules())[-1] == "gateway"
    assert GatewayConfig().services["echo"] == ["127.0.0.1:59999"]
    assert "tests.echo_export" in models_build.export_modules()
    assert 99 in requested_features([])
    assert requested_features([99]) == [99]


def test_an_unregistered_feature_is_unknown_everywhere() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        client.parse_features("echo")
    assert "echo" not in registry.service_modules()
    assert "echo" not in GatewayConfig().services
    with pytest.raises(Exception, match="unknown feature value"):
        requested_features([99])


async def test_fan_out_calls_and_merges_a_registered_feature(
    dummy_feature: features.FeatureSpec,
) -> None:
    server = grpc.aio.server()
    classify_pb2_grpc.add_ClassifyServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gateway = GatewayServicer(GatewayConfig(), StaticResolver({"echo": [f"127.0.0.1:{port}"]}))
    await gateway.start()
    try:
        rgb = np.zeros((30, 40, 3), np.uint8)
        response = await gateway.analyze_pixels(
            rgb, requested_features([99]), gateway_pb2.AnalyzeOptions(), 10.0
        )
    finally:
        await gateway.close()
        await server.stop(None)
    assert not response.errors
    assert [t.name for t in response.classify.tags] == ["echo/40x30"]
    assert [t.name for t in response.tags] == ["echo/40x30"]


def test_table_has_the_four_features_in_response_order() -> None:
    assert features.names()[:4] == ["classify", "ocr", "face", "hash"]
    for spec in features.all_features():
        assert common_pb2.Feature.Name(spec.enum) == spec.enum_name
        assert spec.result_field in gateway_pb2.AnalyzeResponse.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize("name", features.names())
def test_each_service_matches_its_table_entry(name: str) -> None:
    """Folder, definition, port, gRPC service and the models its default config loads."""
    spec = features.by_name(name)
    assert (ROOT / "services" / spec.service).is_dir()
    definition = registry.definition(spec.service)
    assert definition.name == spec.service
    assert definition.default_port == spec.default_port
    assert hasattr(importlib.import_module(spec.stub.__module__), f"{spec.grpc_service}Stub")
    cfg = cfgmod.load(definition.config_cls, environ={})
    loaded = {m.name for m in model_configs(cfg)}
    projection = getattr(cfg, "projection", None)
    if projection is not None and getattr(projection, "model", ""):
        loaded.add(projection.model)
    assert loaded == set(spec.models)
    exported = {m.name for m in importlib.import_module(spec.export_module).MODELS}
    assert set(spec.models) - exported <= {
        m.name for m in models_build.all_exports()
    }  # shared models (efficientnet_lite0) are exported by their first user


def test_docs_service_table_is_the_feature_table() -> None:
    assert features.markdown_table() in (ROOT / "docs" / "operations.md").read_text()
