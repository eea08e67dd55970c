"""torch backend on CUDA: own stream per instance, fp16, CUDA graphs per bucket. Skipped without a
GPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from services.common.config import EngineConfig
from services.common.engines import create_engine
from services.common.engines.torch_backend import TorchEngine
from services.common.repository import ModelEntry, load_entry

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU and the CUDA torch build (`make setup-gpu`); this torch "
        "build or machine has none",
    ),
]


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    return load_entry("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(entry: ModelEntry) -> np.ndarray:
    import skimage.data

    from services.classify.preprocess import to_tensor

    names = ("chelsea", "coffee", "astronaut", "rocket", "cat")
    return np.concatenate(
        [to_tensor(getattr(skimage.data, n)(), entry.preprocessing) for n in names]
    )


@pytest.fixture(scope="module")
def reference(entry: ModelEntry, photos: np.ndarray) -> np.ndarray:
    return create_engine(entry, EngineConfig()).infer({"images": photos})["logits"]


def test_each_instance_owns_a_non_default_stream(entry: ModelEntry) -> None:
    a = create_engine(entry, EngineConfig(backend="torch", device="cuda:0"))
    b = create_engine(entry, EngineConfig(backend="torch", device="cuda:0"))
    assert isinstance(a, TorchEngine) and isinstance(b, TorchEngine)
    assert a._stream is not None and b._stream is not None
    assert a._stream.cuda_stream != b._stream.cuda_stream
    assert torch.cuda.default_stream().cuda_stream not in (
        a._stream.cuda_stream,
        b._stream.cuda_stream,
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_matches_onnxruntime_on_photos(
    entry: ModelEntry, photos: np.ndarray, reference: np.ndarray, precision: str
) -> None:
    engine = create_engine(
        entry, EngineConfig(backend="torch", device="cuda:0", precision=precision)
    )
    assert isinstance(engine, TorchEngine) and engine.precision == precision
    got = engine.infer({"images": photos})["logits"]
    assert got.dtype == np.float32
    assert (got.argmax(1) == reference.argmax(1)).all()
    assert float(np.abs(got - reference).max()) < (1e-2 if precision == "fp32" else 0.2)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_give_the_eager_answers_at_every_bucket(
    entry: ModelEntry, photos: np.ndarray, precision: str
) -> None:
    config = EngineConfig(
        backend="torch",
        device="cuda:0",
        precision=precision,
        cuda_graphs=True,
        batch_buckets=[1, 2, 4, 8],
    )
    graphed = create_engine(entry, config)
    eager = create_engine(
        entry, EngineConfig(backend="torch", device="cuda:0", precision=precision)
    )
    assert isinstance(graphed, TorchEngine) and graphed._graphs is not None
    for rows in (1, 3, 5):  # 3 and 5 run padded in buckets 4 and 8
        batch = photos[:rows]
        np.testing.assert_allclose(
            graphed.infer({"images": batch})["logits"],
            eager.infer({"images": batch})["logits"],
            atol=5e-2 if precision == "fp16" else 1e-3,
        )


def test_two_instances_run_concurrently_and_stay_correct(
    entry: ModelEntry, photos: np.ndarray, reference: np.ndarray
) -> None:
    engines = [
        create_engine(entry, EngineConfig(backend="torch", device="cuda:0")) for _ in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: engines[i % 2].infer({"images": photos}), range(8)))
    for got in results:
        assert float(np.abs(got["logits"] - reference).max()) < 1e-2
