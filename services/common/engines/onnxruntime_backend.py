"""ONNX Runtime backend: the default, CPU everywhere (CUDA provider where present)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from services.common.engines.base import Engine, EngineError
from services.common.repository import TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeEngine(Engine):
    session: ort.InferenceSession

    def load(self) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.config.threads > 0:
            opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        spin = "1" if self.config.spin_wait else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        opts.enable_cpu_mem_arena = self.config.cpu_mem_arena
        providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
        if self.config.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    "onnxruntime here has no CUDA provider; use --backend torch or "
                    "tensorrt for GPUs"
                )
            device_id = int(self.config.device.partition(":")[2] or 0)
            providers = [
                ("CUDAExecutionProvider", {"device_id": device_id}),
                "CPUExecutionProvider",
            ]
        self.session = ort.InferenceSession(
            str(self.entry.onnx_path), sess_options=opts, providers=providers
        )
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._last_shrink = time.monotonic()
        # Only inputs whose sizes vary beyond the batch (OCR's, a detector's) fragment the arena
        # and make it keep growing. A fixed-shape model's arena stops at its largest batch's
        # working set, which the next batch needs again: shrinking it only has every run after
        # a shrink fault those pages back in (about 330 page faults per image, 2 % of the
        # classify service's CPU, at 10 s).
        self._shapes_vary = any(-1 in spec.shape[1:] for spec in self.inputs)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [_spec(i) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [_spec(o) for o in self.session.get_outputs()]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, dict(inputs), self._run_options())
        return dict(zip(self._output_names, results, strict=True))

    def _run_options(self) -> ort.RunOptions | None:
        """Now and then, a run that hands the arena's unused regions back at its end (models
        whose input sizes vary beyond the batch only)."""
        period = self.config.arena_shrink_period_s
        if not self.config.cpu_mem_arena or period <= 0 or not self._shapes_vary:
            return None
        now = time.monotonic()
        if now - self._last_shrink < period:
            return None
        self._last_shrink = now
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options

    def close(self) -> None:
        self.__dict__.pop("session", None)
