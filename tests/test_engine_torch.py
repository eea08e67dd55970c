"""torch backend on CPU: same graph as ONNX Runtime, same answers on real photos, served end to
end."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from services.common.config import BatcherConfig, EngineConfig, ModelConfig
from services.common.engines import EngineError, create_engine
from services.common.engines.base import Engine
from services.common.engines.torch_backend import TorchEngine
from services.common.models import ServedModel
from services.common.repository import ModelEntry, default_root, load_entry
from tests.support import random_inputs, repository_models

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field")


def photo_batch(entry: ModelEntry) -> np.ndarray:
    from services.classify.preprocess import to_tensor

    return np.concatenate(
        [to_tensor(getattr(skimage.data, name)(), entry.preprocessing) for name in PHOTOS]
    )


@pytest.fixture(scope="module")
def lite0() -> ModelEntry:
    return load_entry("efficientnet_lite0")


@pytest.fixture(scope="module")
def ort_lite0(lite0: ModelEntry) -> Engine:
    return create_engine(lite0, EngineConfig())


@pytest.fixture(scope="module")
def torch_lite0(lite0: ModelEntry) -> Engine:
    return create_engine(lite0, EngineConfig(backend="torch", threads=2))


@pytest.mark.parametrize("model", repository_models())
def test_every_repository_model_matches_onnxruntime(model: str) -> None:
    entry = load_entry(model)
    torch_engine = create_engine(entry, EngineConfig(backend="torch"))
    ort_engine = create_engine(entry, EngineConfig())
    assert [s.name for s in torch_engine.inputs] == [s.name for s in ort_engine.inputs]
    assert [s.name for s in torch_engine.outputs] == [s.name for s in ort_engine.outputs]
    feeds = random_inputs(ort_engine, batch=2)
    ours, theirs = torch_engine.infer(feeds), ort_engine.infer(feeds)
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape and ours[name].dtype == expected.dtype, name
        scale = max(float(np.abs(expected).max()), 1.0)
        assert float(np.abs(ours[name] - expected).max()) <= 1e-3 * scale, name
    torch_engine.close()


def test_efficientnet_agrees_with_onnxruntime_on_real_photos(
    lite0: ModelEntry, torch_lite0: Engine, ort_lite0: Engine
) -> None:
    images = photo_batch(lite0)
    ours, theirs = torch_lite0.infer({"images": images}), ort_lite0.infer({"images": images})
    assert float(np.abs(ours["logits"] - theirs["logits"]).max()) < 1e-3
    assert float(np.abs(ours["features"] - theirs["features"]).max()) < 1e-3
    assert (ours["logits"].argmax(1) == theirs["logits"].argmax(1)).all()
    labels = lite0.labels()
    assert "cat" in labels[int(ours["logits"][0].argmax())].lower()  # chelsea is a tabby


def test_fp16_keeps_top1_on_real_photos(lite0: ModelEntry, ort_lite0: Engine) -> None:
    engine = create_engine(lite0, EngineConfig(backend="torch", precision="fp16"))
    assert isinstance(engine, TorchEngine) and engine.precision == "fp16"
    images = photo_batch(lite0)
    ours, theirs = engine.infer({"images": images}), ort_lite0.infer({"images": images})
    assert ours["logits"].dtype == np.float32
    assert (ours["logits"].argmax(1) == theirs["logits"].argmax(1)).all()
    assert float(np.abs(ours["logits"] - theirs["logits"]).max()) < 0.2
    # Half precision really ran: the answers are close but not bit-identical.
    assert float(np.abs(ours["logits"] - theirs["logits"]).max()) > 1e-5


def test_fp16_falls_back_to_fp32_when_the_probe_misses_tolerance(
    lite0: ModelEntry, torch_lite0: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        engine = create_engine(
            lite0, EngineConfig(backend="torch", precision="fp16", fp16_tolerance=1e-9)
        )
    assert isinstance(engine, TorchEngine) and engine.precision == "fp32"
    assert "stays fp32" in caplog.text
    feeds = random_inputs(engine, batch=2)
    np.testing.assert_allclose(
        engine.infer(feeds)["logits"], torch_lite0.infer(feeds)["logits"], atol=1e-5
    )


def test_cuda_graphs_on_cpu_warn_and_still_run(
    lite0: ModelEntry, torch_lite0: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        engine = create_engine(lite0, EngineConfig(backend="torch", cuda_graphs=True))
    assert "needs a CUDA device" in caplog.text
    feeds = random_inputs(engine, batch=1)
    np.testing.assert_allclose(
        engine.infer(feeds)["logits"], torch_lite0.infer(feeds)["logits"], atol=1e-5
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EngineConfig(backend="torch", precision="int8"), "precision"),
        (EngineConfig(backend="torch", device="tpu"), "torch device"),
        (EngineConfig(backend="torch", device="cuda:7"), "CUDA"),
    ],
)
def test_bad_settings_fail_at_load_with_a_clear_message(
    lite0: ModelEntry, config: EngineConfig, message: str
) -> None:
    if config.device.startswith("cuda"):
        torch = pytest.importorskip("torch")
        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    with pytest.raises(EngineError, match=message):
        create_engine(lite0, config)


def test_a_model_without_an_onnx_graph_is_refused(tmp_path: Path) -> None:
    entry = ModelEntry("projection_only", 1, tmp_path, [], [], 0)
    with pytest.raises(EngineError, match="no ONNX graph"):
        create_engine(entry, EngineConfig(backend="torch"))


def test_bad_inputs_are_refused(torch_lite0: Engine) -> None:
    with pytest.raises(EngineError, match="missing input"):
        torch_lite0.infer({"pixels": np.zeros((1, 3, 224, 224), np.float32)})


async def test_served_model_batches_concurrent_requests_through_torch(
    lite0: ModelEntry, ort_lite0: Engine
) -> None:
    config = ModelConfig(
        name="efficientnet_lite0",
        engine=EngineConfig(backend="torch"),
        batcher=BatcherConfig(max_batch_size=8, max_queue_delay_us=50_000, instances=2),
    )
    model = ServedModel(config)
    await model.start()
    try:
        images = photo_batch(lite0)
        results = await asyncio.gather(
            *(model.infer({"images": images[i : i + 1]}) for i in range(len(images)))
        )
    finally:
        await model.close()
    expected = ort_lite0.infer({"images": images})["logits"]
    got = np.concatenate([r["logits"] for r in results])
    assert float(np.abs(got - expected).max()) < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()


async def test_classify_service_on_torch_backend_names_the_cat(chelsea_jpeg: bytes) -> None:
    import grpc

    from services.classify.main import DEFINITION
    from tests.support import running_service
    from visionmesh.v1 import classify_pb2, classify_pb2_grpc, common_pb2

    async with running_service(
        DEFINITION, {"classifier": {"engine": {"backend": "torch"}}}
    ) as server:
        classifier = server.registrations[0].servicer.pipeline.classifier
        assert classifier.batcher.engines and all(
            isinstance(e, TorchEngine) for e in classifier.batcher.engines
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            reply = await stub.Classify(
                classify_pb2.ClassifyRequest(image=common_pb2.Image(encoded=chelsea_jpeg), top_k=5),
                timeout=60,
            )
    assert "cat" in reply.labels[0].name.lower()
    assert reply.labels[0].score > 0.2


def test_model_repository_is_where_tests_look() -> None:
    # Guards the parametrised test above against silently running on nothing.
    assert "efficientnet_lite0" in repository_models(), (
        f"no models under {default_root()}: run `make models`"
    )
    assert Path(default_root()).is_dir()
