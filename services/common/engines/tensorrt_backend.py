"""TensorRT backend: a plan built from the repository's ONNX, run on the instance's own CUDA stream.

On first start on a GPU the ONNX is parsed and built into a plan with one
optimisation profile (batch 1 .. the model's max batch, which the batcher
never exceeds; other dynamic dims from config.yaml ``dynamic_dims``), the
fp16 flag when ``precision: fp16``, and a workspace limit. The plan is cached
next to the ONNX (or in ``plan_cache_dir``) keyed by GPU model, TensorRT
version, precision, ONNX digest and profile -- see plan_cache.py -- so later
starts only deserialise it.

Device buffers are torch CUDA tensors (allocated on the engine's stream
through torch's caching allocator), host staging is pinned memory, and each
batch is one ``execute_async_v3`` on the stream this instance owns: several
instances of a model on one GPU overlap their copies and kernels.

TensorRT cannot be installed on the CPU machines: this module is type-checked
against ``tensorrt-stubs`` and refuses to load (with the reason) where the
real ``tensorrt`` package is absent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from services.common.engines.base import EngineError, SpecsFromLoad, ordered_inputs
from services.common.engines.plan_cache import PlanKey, load_or_build, plan_path
from services.common.engines.shapes import (
    ProfileShape,
    ShapeError,
    optimization_profile,
    profile_fingerprint,
)
from services.common.engines.torch_device import PRECISIONS, parse_device, torch_dtype
from services.common.engines.torch_modules import PinnedStaging
from services.common.repository import TensorSpec, sha256_file

try:
    import tensorrt as trt
except ImportError:  # pragma: no cover - neither TensorRT nor its stubs installed
    trt = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def tensorrt_available() -> bool:
    """True where the real TensorRT runtime imports (its stubs alone import as an empty
    namespace)."""
    return trt is not None and hasattr(trt, "Builder")


def _require_tensorrt() -> None:
    if not tensorrt_available():
        raise EngineError(
            "backend 'tensorrt' needs NVIDIA TensorRT (pip package tensorrt) and a CUDA GPU; "
            "only its type stubs are installed here -- use backend torch or onnxruntime"
        )


def _logger() -> trt.ILogger:
    return trt.Logger(trt.Logger.WARNING)


def build_plan(
    onnx_path: Path, profile: list[ProfileShape], precision: str, workspace_mb: int
) -> bytes:
    """Parse the ONNX and build a serialised plan with one optimisation profile."""
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        # TensorRT keeps a layer in fp32 where fp16 has no faster kernel; IO stays fp32.
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for shape in profile:
        opt_profile.set_shape(
            shape.name,
            trt.Dims(list(shape.min)),
            trt.Dims(list(shape.opt)),
            trt.Dims(list(shape.max)),
        )
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT failed to build a plan for {onnx_path} (see the TensorRT log above)"
        )
    return bytes(memoryview(serialized))


# Plan file -> (runtime, engine), shared by the instances of a model in this process.
_ENGINES: dict[Path, tuple[trt.Runtime, trt.ICudaEngine]] = {}
_ENGINES_LOCK = threading.Lock()


def _shared_engine(
    plan_file: Path, load: Callable[[], tuple[trt.Runtime, trt.ICudaEngine]]
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    with _ENGINES_LOCK:
        if plan_file not in _ENGINES:
            _ENGINES[plan_file] = load()
        return _ENGINES[plan_file]


class TensorRTEngine(SpecsFromLoad):
    def load(self) -> None:
        _require_tensorrt()
        if self.config.precision not in PRECISIONS:
            raise EngineError(
                f"precision {self.config.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        self.device = parse_device(self.config.device)
        if self.device.type != "cuda":
            raise EngineError(
                f"backend 'tensorrt' runs on a CUDA device, not {self.config.device!r}"
            )
        self.max_batch = max(self.entry.max_batch_size, 1)
        try:
            self.profile = optimization_profile(
                self.entry.inputs,
                self.max_batch,
                self.config.opt_batch_size,
                self.entry.extra.get("dynamic_dims"),
            )
        except ShapeError as exc:
            raise EngineError(f"model {self.entry.name}: {exc}") from exc
        with torch.cuda.device(self.device):
            self.plan_file = plan_path(
                self.entry.onnx_path, self._plan_key(), self.config.plan_cache_dir
            )
            self._runtime, self._engine = _shared_engine(self.plan_file, self._deserialize)
            # Instances share the deserialised engine (its weights live once on the GPU);
            # each has its own execution context, buffers and stream.
            self._context = self._engine.create_execution_context()
        self._lock = threading.Lock()
        self._stream = torch.cuda.Stream(self.device)
        self._staging = PinnedStaging()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [
            self._spec(n)
            for n in names
            if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._outputs = [
            self._spec(n)
            for n in names
            if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        self._profile_by_name = {p.name: p for p in self.profile}

    def _plan_key(self) -> PlanKey:
        return PlanKey(
            gpu_name=torch.cuda.get_device_name(self.device),
            trt_version=str(trt.__version__),
            precision=self.config.precision,
            onnx_sha256=sha256_file(self.entry.onnx_path),
            profile=profile_fingerprint(self.profile),
        )

    def _deserialize(self) -> tuple[trt.Runtime, trt.ICudaEngine]:
        runtime = trt.Runtime(_logger())  # the engine must not outlive its runtime: kept beside it

        def build() -> bytes:
            log.info(
                "model %s: building TensorRT plan %s (first start on this GPU; minutes)",
                self.entry.name,
                self.plan_file.name,
            )
            return build_plan(
                self.entry.onnx_path, self.profile, self.config.precision, self.config.workspace_mb
            )

        plan, built = load_or_build(self.plan_file, build)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None and not built:
            # A plan from a different driver/TensorRT build that slipped past the key: rebuild once.
            log.warning(
                "model %s: cached plan %s does not deserialise; rebuilding",
                self.entry.name,
                self.plan_file,
            )
            self.plan_file.unlink(missing_ok=True)
            plan, _ = load_or_build(self.plan_file, build)
            engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(
                f"model {self.entry.name}: TensorRT could not deserialise {self.plan_file}"
            )
        return runtime, engine

    def _spec(self, name: str) -> TensorSpec:
        dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
        return TensorSpec(
            name, dtype, tuple(int(d) for d in self._engine.get_tensor_shape(name)[:])
        )

    def _arrays(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = ordered_inputs(self.entry.name, self._inputs, inputs)
        for spec, array in zip(self._inputs, arrays, strict=True):
            profile = self._profile_by_name.get(spec.name)
            if profile is not None and not profile.admits(array.shape):
                raise EngineError(
                    f"model {self.entry.name}: input {spec.name} shape {array.shape} "
                    f"is outside the plan's profile {profile.min}..{profile.max}"
                )
        return arrays

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._arrays(inputs)
        with self._lock, torch.inference_mode(), torch.cuda.stream(self._stream):
            keep_alive = []
            for spec, array in zip(self._inputs, arrays, strict=True):
                host = self._staging.view(f"in:{spec.name}", array.shape, torch_dtype(array.dtype))
                host.numpy()[...] = array
                device = host.to(self.device, non_blocking=True)
                keep_alive.append(device)
                if not self._context.set_input_shape(spec.name, tuple(array.shape)):
                    raise EngineError(
                        f"model {self.entry.name}: TensorRT refused shape "
                        f"{array.shape} for {spec.name}"
                    )
                self._context.set_tensor_address(spec.name, device.data_ptr())
            device_out = []
            for spec in self._outputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name)[:])
                out = torch.empty(shape, dtype=torch_dtype(spec.dtype), device=self.device)
                self._context.set_tensor_address(spec.name, out.data_ptr())
                device_out.append(out)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"model {self.entry.name}: TensorRT execution failed")
            hosts = []
            for spec, out in zip(self._outputs, device_out, strict=True):
                host = self._staging.view(f"out:{spec.name}", tuple(out.shape), out.dtype)
                host.copy_(out, non_blocking=True)
                hosts.append(host)
        self._stream.synchronize()
        return {
            spec.name: host.numpy().copy() for spec, host in zip(self._outputs, hosts, strict=True)
        }

    def close(self) -> None:
        for attr in ("_context", "_engine", "_runtime"):
            self.__dict__.pop(attr, None)
        staging = getattr(self, "_staging", None)
        if staging is not None:
            staging.clear()
