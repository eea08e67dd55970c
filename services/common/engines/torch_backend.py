"""torch backend: the repository's ONNX graph run by torch, on CPU or one CUDA device.

On CUDA every engine instance owns a ``torch.cuda.Stream``: its host-to-device
copies (from reused pinned buffers, ``non_blocking``), kernels and
device-to-host copies are queued on that stream only, so two instances of a
model on one GPU overlap instead of serialising on the default stream.
``precision: fp16`` runs the module in half precision when a probe batch
shows the outputs stay within ``fp16_tolerance`` of fp32 (else it stays fp32
and says so in the log); ``cuda_graphs: true`` captures one CUDA graph per
batch-size bucket. On CPU the same code runs without streams or graphs, which
is how CI tests it.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from services.common.engines.base import EngineError, SpecsFromLoad, ordered_inputs
from services.common.engines.cuda_graphs import CudaGraphSet
from services.common.engines.shapes import ShapeError, batch_buckets, has_static_rows
from services.common.engines.torch_device import PRECISIONS, parse_device, torch_dtype
from services.common.engines.torch_modules import (
    ConversionFailed,
    PinnedStaging,
    as_tuple,
    load_onnx_module,
    relative_error,
    to_compute,
    to_float32,
)

log = logging.getLogger(__name__)

# Size of a dynamic non-batch dim in the fp16 probe when config.yaml gives no range.
PROBE_DIM = 64


class TorchEngine(SpecsFromLoad):
    module: torch.nn.Module

    def load(self) -> None:
        if self.config.precision not in PRECISIONS:
            raise EngineError(
                f"precision {self.config.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        self.device = parse_device(self.config.device)
        self.is_cuda = self.device.type == "cuda"
        if not self.is_cuda and self.config.threads > 0:
            torch.set_num_threads(self.config.threads)  # process-wide: torch has no per-module pool
        try:
            module, self._inputs, self._outputs = load_onnx_module(self.entry.onnx_path)
        except ConversionFailed as exc:
            raise EngineError(str(exc)) from exc
        self.module = module.to(self.device)
        # The batcher may hand one instance's calls to different pool threads; calls never overlap.
        self._lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = (
            torch.cuda.Stream(self.device) if self.is_cuda else None
        )
        self._staging = PinnedStaging()
        self.precision = "fp32"
        if self.config.precision == "fp16":
            self._try_half()
        self._graphs: CudaGraphSet | None = None
        if self.config.cuda_graphs:
            self._capture_graphs()

    # -- set-up -----------------------------------------------------------

    def _probe_inputs(self) -> list[torch.Tensor]:
        """A deterministic batch of 2 in roughly the normalised-pixel range."""
        generator = torch.Generator().manual_seed(0)
        ranges = self.entry.extra.get("dynamic_dims") or {}
        probes = []
        for spec in self._inputs:
            dims = [2] + [
                d if d >= 0 else int((ranges.get(spec.name) or {}).get(axis, [0, PROBE_DIM])[1])
                for axis, d in enumerate(spec.shape[1:], 1)
            ]
            dtype = torch_dtype(spec.dtype)
            tensor = (
                torch.rand(dims, generator=generator) * 2 - 1
                if dtype.is_floating_point
                else torch.zeros(dims)
            )
            probes.append(tensor.to(dtype).to(self.device))
        return probes

    def _try_half(self) -> None:
        probe = self._probe_inputs()
        # Halve a copy: fp16 -> fp32 does not give the original weights back on fallback.
        half_module = copy.deepcopy(self.module).half()
        with torch.inference_mode():
            reference = as_tuple(self.module(*probe))
            candidate = as_tuple(half_module(*[to_compute(t, True) for t in probe]))
        errors = [
            relative_error(r, c)
            for r, c in zip(reference, candidate, strict=True)
            if r.is_floating_point()
        ]
        worst = max(errors, default=0.0)
        if worst <= self.config.fp16_tolerance:
            self.module, self.precision = half_module, "fp16"
            log.info("model %s runs in fp16 (probe relative error %.2g)", self.entry.name, worst)
        else:
            log.warning(
                "model %s stays fp32: fp16 outputs differ by %.2g of their scale on a "
                "probe batch (tolerance %.2g)",
                self.entry.name,
                worst,
                self.config.fp16_tolerance,
            )

    def _capture_graphs(self) -> None:
        if not self.is_cuda or self._stream is None:
            log.warning(
                "model %s: cuda_graphs needs a CUDA device; running without graphs on %s",
                self.entry.name,
                self.device,
            )
            return
        if not has_static_rows(self._inputs):
            log.warning(
                "model %s: inputs have dynamic non-batch dims, so no CUDA graphs", self.entry.name
            )
            return
        max_batch = self.entry.max_batch_size or max(self.config.batch_buckets, default=1)
        try:
            buckets = batch_buckets(max_batch, self.config.batch_buckets)
        except ShapeError as exc:
            raise EngineError(f"model {self.entry.name}: {exc}") from exc
        graphs = CudaGraphSet(
            self.module, self._inputs, buckets, self.device, self._stream, self.precision == "fp16"
        )
        graphs.capture()
        self._graphs = graphs
        log.info("model %s: captured CUDA graphs for batch buckets %s", self.entry.name, buckets)

    # -- interface --------------------------------------------------------

    def _arrays(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = ordered_inputs(self.entry.name, self._inputs, inputs)
        rows = {a.shape[0] if a.ndim else -1 for a in arrays}
        if len(rows) != 1 or -1 in rows:
            raise EngineError(
                f"model {self.entry.name}: inputs disagree on the batch size ({sorted(rows)})"
            )
        return arrays

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._arrays(inputs)
        names = [s.name for s in self._outputs]
        with self._lock, torch.inference_mode():
            if self._stream is None:
                results = as_tuple(
                    self.module(
                        *[to_compute(torch.from_numpy(a), self.precision == "fp16") for a in arrays]
                    )
                )
                return {n: to_float32(r).numpy() for n, r in zip(names, results, strict=True)}
            return self._infer_cuda(arrays, names)

    def _infer_cuda(
        self, arrays: Sequence[np.ndarray], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        assert self._stream is not None
        half = self.precision == "fp16"
        with torch.cuda.stream(self._stream):
            hosts = []
            for spec, array in zip(self._inputs, arrays, strict=True):
                host = self._staging.view(f"in:{spec.name}", array.shape, torch_dtype(spec.dtype))
                host.numpy()[...] = array
                hosts.append(host)
            graphs = self._graphs
            if graphs is not None and arrays[0].shape[0] <= graphs.buckets[-1]:
                device_out = graphs.run(hosts, arrays[0].shape[0])
            else:
                device_in = [to_compute(h.to(self.device, non_blocking=True), half) for h in hosts]
                device_out = [to_float32(o) for o in as_tuple(self.module(*device_in))]
            outs = []
            for name, tensor in zip(names, device_out, strict=True):
                host = self._staging.view(f"out:{name}", tuple(tensor.shape), tensor.dtype)
                host.copy_(tensor, non_blocking=True)
                outs.append(host)
        # Only this engine's stream: other instances keep the GPU busy meanwhile.
        self._stream.synchronize()
        # Copies: the pinned buffers are reused by the next batch.
        return {n: h.numpy().copy() for n, h in zip(names, outs, strict=True)}

    def close(self) -> None:
        if getattr(self, "_graphs", None) is not None:
            assert self._graphs is not None
            self._graphs.close()
            self._graphs = None
        staging = getattr(self, "_staging", None)
        if staging is not None:
            staging.clear()
        self.__dict__.pop("module", None)
        if getattr(self, "is_cuda", False):
            torch.cuda.empty_cache()
