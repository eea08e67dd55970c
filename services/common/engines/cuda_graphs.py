"""CUDA graphs per batch-size bucket for the torch engine.

A captured graph replays the whole forward pass as one launch, which removes
the per-kernel CPU launch cost that dominates small batches. Graphs need
fixed shapes, so one is captured per bucket (1, 2, 4, ... max batch); a batch
of n rows is copied into the smallest bucket's static input and the first n
output rows are read back. All buckets of one engine share one memory pool:
they never run concurrently (the engine serialises its calls), and each
graph's static outputs stay referenced so no later capture reuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.common.engines.shapes import bucket_for
from services.common.engines.torch_device import torch_dtype
from services.common.engines.torch_modules import as_tuple, to_compute, to_float32
from services.common.repository import TensorSpec

WARMUP_RUNS = 2


@dataclass
class _Bucket:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class CudaGraphSet:
    def __init__(
        self,
        module: torch.nn.Module,
        input_specs: Sequence[TensorSpec],
        buckets: Sequence[int],
        device: torch.device,
        stream: torch.cuda.Stream,
        half: bool,
    ) -> None:
        self._module = module
        self._specs = list(input_specs)
        self.buckets = sorted(buckets)
        self._device = device
        self._stream = stream
        self._half = half
        self._graphs: dict[int, _Bucket] = {}

    def _forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [
            to_float32(o)
            for o in as_tuple(self._module(*[to_compute(t, self._half) for t in inputs]))
        ]

    def capture(self) -> None:
        """Capture every bucket, largest first (it sizes the shared pool)."""
        pool = None
        for size in sorted(self.buckets, reverse=True):
            static_in = [
                torch.zeros(
                    (size, *spec.shape[1:]),
                    dtype=torch_dtype(spec.dtype),
                    device=self._device,
                )
                for spec in self._specs
            ]
            with torch.inference_mode(), torch.cuda.stream(self._stream):
                # Warm-up on the capture stream: lazy cuDNN/cuBLAS set-up must not land in the
                # graph.
                for _ in range(WARMUP_RUNS):
                    self._forward(static_in)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, stream=self._stream):
                static_out = self._forward(static_in)
            pool = graph.pool()
            self._graphs[size] = _Bucket(graph, static_in, static_out)

    def run(self, host_inputs: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
        """Copy ``rows`` rows in, replay the bucket's graph; returns views of its static outputs.

        Must be called inside ``torch.cuda.stream(stream)``; the caller copies
        the outputs out before the next call.
        """
        bucket = self._graphs[bucket_for(rows, self.buckets)]
        for static, host in zip(bucket.inputs, host_inputs, strict=True):
            static[:rows].copy_(host, non_blocking=True)
        bucket.graph.replay()
        return [out[:rows] for out in bucket.outputs]

    def close(self) -> None:
        self._graphs.clear()
