"""TensorRT backend: profile and plan-cache logic everywhere; the runtime where TensorRT and a GPU
exist."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.common.config import EngineConfig
from services.common.engines import EngineError, create_engine
from services.common.engines.plan_cache import PlanKey, load_or_build, plan_path
from services.common.engines.shapes import (
    ShapeError,
    batch_buckets,
    bucket_for,
    has_static_rows,
    optimization_profile,
    profile_fingerprint,
)
from services.common.engines.tensorrt_backend import tensorrt_available
from services.common.repository import TensorSpec, load_entry

IMAGES = TensorSpec("images", "float32", (-1, 3, 224, 224))
OCR_DET = TensorSpec("x", "float32", (-1, 3, -1, -1))


# -- batch buckets (CUDA graphs) ----------------------------------------------


def test_default_buckets_are_powers_of_two_capped_by_the_max_batch() -> None:
    assert batch_buckets(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert batch_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert batch_buckets(1) == [1]


def test_configured_buckets_always_include_the_max_batch() -> None:
    assert batch_buckets(32, [8, 1]) == [1, 8, 32]
    with pytest.raises(ShapeError, match="outside"):
        batch_buckets(32, [64])


def test_a_batch_runs_in_the_smallest_bucket_that_holds_it() -> None:
    buckets = batch_buckets(32)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    with pytest.raises(ShapeError, match="exceeds"):
        bucket_for(33, buckets)


def test_graphs_need_fixed_non_batch_dims() -> None:
    assert has_static_rows([IMAGES])
    assert not has_static_rows([OCR_DET])


# -- optimisation profile -----------------------------------------------------


def test_profile_covers_batch_one_to_the_max_batch() -> None:
    (profile,) = optimization_profile([IMAGES], max_batch=128)
    assert profile.min == (1, 3, 224, 224)
    assert profile.opt == (32, 3, 224, 224)
    assert profile.max == (128, 3, 224, 224)
    # Every batch size the batcher can form fits the profile.
    assert all(profile.admits((n, 3, 224, 224)) for n in range(1, 129))
    assert not profile.admits((129, 3, 224, 224))
    assert not profile.admits((1, 3, 225, 224))


def test_profile_opt_batch_is_configurable_and_bounded() -> None:
    (profile,) = optimization_profile([IMAGES], max_batch=16, opt_batch_size=8)
    assert profile.opt[0] == 8
    (small,) = optimization_profile([IMAGES], max_batch=4)
    assert small.opt[0] == 4
    with pytest.raises(ShapeError, match="opt batch"):
        optimization_profile([IMAGES], max_batch=16, opt_batch_size=32)


def test_dynamic_image_dims_take_their_range_from_config() -> None:
    ranges: dict[str, dict[int | str, list[int]]] = {
        "x": {2: [32, 640, 1536], "3": [32, 640, 1536]}
    }
    (profile,) = optimization_profile([OCR_DET], max_batch=4, dynamic_dims=ranges)
    assert (
        profile.min == (1, 3, 32, 32)
        and profile.opt == (4, 3, 640, 640)
        and profile.max == (4, 3, 1536, 1536)
    )


def test_dynamic_dims_without_a_range_are_refused_with_the_fix() -> None:
    with pytest.raises(ShapeError, match=r"axis 2 is dynamic.*dynamic_dims"):
        optimization_profile([OCR_DET], max_batch=4)
    with pytest.raises(ShapeError, match="min <= opt <= max"):
        optimization_profile(
            [OCR_DET], max_batch=4, dynamic_dims={"x": {2: [64, 32, 128], 3: [1, 2, 3]}}
        )


def test_fingerprint_changes_with_the_profile() -> None:
    a = profile_fingerprint(optimization_profile([IMAGES], max_batch=128))
    b = profile_fingerprint(optimization_profile([IMAGES], max_batch=64))
    assert a != b and "images:1x3x224x224/32x3x224x224/128x3x224x224" == a


# -- plan cache -----------------------------------------------------------------


def key(**changes: str) -> PlanKey:
    fields = {
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "trt_version": "10.13.0.35",
        "precision": "fp16",
        "onnx_sha256": "ab" * 32,
        "profile": "images:1/32/128",
    }
    fields.update(changes)
    return PlanKey(**fields)


def test_plan_name_is_keyed_by_gpu_tensorrt_version_and_precision() -> None:
    name = key().filename()
    assert name.startswith("model.nvidia-h100-80gb-hbm3.trt10.13.0.35.fp16.") and name.endswith(
        ".plan"
    )
    variants = {
        key(gpu_name="NVIDIA L4"),
        key(trt_version="10.8.0.43"),
        key(precision="fp32"),
        key(onnx_sha256="cd" * 32),
        key(profile="images:1/8/8"),
    }
    names = {v.filename() for v in variants} | {name}
    assert (
        len(names) == 6
    )  # any change of GPU, TensorRT, precision, model or profile gets its own plan


def test_plan_lives_next_to_the_onnx_unless_a_cache_dir_is_set(tmp_path: Path) -> None:
    onnx = tmp_path / "efficientnet_lite0" / "1" / "model.onnx"
    assert plan_path(onnx, key()).parent == onnx.parent
    assert plan_path(onnx, key(), str(tmp_path / "plans")).parent == tmp_path / "plans"


def test_plan_is_built_once_even_when_instances_start_together(tmp_path: Path) -> None:
    path = tmp_path / "model.gpu.trt10.fp16.x.plan"
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        time.sleep(0.2)  # a slow build: the other instances must wait for it, not start their own
        return b"serialized-plan"

    results: list[tuple[bytes, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_or_build(path, build)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(built for _, built in results) == [False, False, False, True]
    assert all(plan == b"serialized-plan" for plan, _ in results)
    assert path.read_bytes() == b"serialized-plan"
    assert load_or_build(path, build) == (b"serialized-plan", False) and len(builds) == 1


def test_a_failed_build_leaves_no_plan_behind(tmp_path: Path) -> None:
    path = tmp_path / "p.plan"

    def fail() -> bytes:
        raise RuntimeError("builder out of memory")

    with pytest.raises(RuntimeError):
        load_or_build(path, fail)
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))


# -- runtime ----------------------------------------------------------------------


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_tensorrt = pytest.mark.skipif(
    not (tensorrt_available() and _cuda()),
    reason="TensorRT runtime tests need the tensorrt package and a CUDA GPU (only "
    "tensorrt-stubs are installed here)",
)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_without_tensorrt_the_backend_says_why() -> None:
    with pytest.raises(EngineError, match="needs NVIDIA TensorRT"):
        create_engine(
            load_entry("efficientnet_lite0"), EngineConfig(backend="tensorrt", device="cuda:0")
        )


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime_and_caches_its_plan(tmp_path: Path, precision: str) -> None:
    import skimage.data

    from services.classify.preprocess import to_tensor

    entry = load_entry("efficientnet_lite0")
    config = EngineConfig(
        backend="tensorrt", device="cuda:0", precision=precision, plan_cache_dir=str(tmp_path)
    )
    engine = create_engine(entry, config)
    plans = list(tmp_path.glob("*.plan"))
    assert len(plans) == 1 and f".{precision}." in plans[0].name
    images = np.concatenate(
        [
            to_tensor(getattr(skimage.data, n)(), entry.preprocessing)
            for n in ("chelsea", "coffee", "astronaut", "rocket")
        ]
    )
    reference = create_engine(entry, EngineConfig()).infer({"images": images})
    got = engine.infer({"images": images})
    assert (got["logits"].argmax(1) == reference["logits"].argmax(1)).all()
    assert float(np.abs(got["logits"] - reference["logits"]).max()) < (
        1e-2 if precision == "fp32" else 0.2
    )
    mtime = plans[0].stat().st_mtime_ns
    again = create_engine(entry, config)  # second start: deserialise, no rebuild
    assert plans[0].stat().st_mtime_ns == mtime
    np.testing.assert_allclose(
        again.infer({"images": images[:1]})["logits"], got["logits"][:1], atol=1e-2
    )
    with pytest.raises(EngineError, match="outside the plan's profile"):
        engine.infer({"images": np.zeros((entry.max_batch_size + 1, 3, 224, 224), np.float32)})


# -- stubs for mypy -------------------------------------------------------------


def test_stub_repair_makes_generated_signatures_valid_python() -> None:
    import ast

    from tools.tensorrt_typings import repair

    broken = (
        "class P:\n"
        "    def on_shape_change(self, in: list[int], out: list[int]) -> None:\n        ...\n"
        "    def add_scale_nd(self, mode: int, shift: dict[str, int] = None, "
        "channel_axis: int) -> int:\n        ...\n"
        "    def f(self, a: int = 1, *, b: int) -> None:\n        ...\n"
    )
    with pytest.raises(SyntaxError):
        ast.parse(broken)
    fixed = repair(broken)
    ast.parse(fixed)
    assert (
        "in_: list[int]" in fixed and "channel_axis: int = ..." in fixed and "*, b: int)" in fixed
    )


def test_installed_tensorrt_stubs_repair_cleanly(tmp_path: Path) -> None:
    from importlib import metadata

    from tools.tensorrt_typings import main

    try:
        metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed")
    assert main(str(tmp_path)) == 0
    assert (tmp_path / "tensorrt_bindings" / "tensorrt.pyi").stat().st_size > 100_000
    assert (tmp_path / "tensorrt" / "__init__.pyi").is_file()
