"""Turn a repository ONNX file into a torch module, plus the torch-side helpers the GPU engines
share.

The ONNX in the model repository is the one source of truth, so the torch
backend runs exactly the graph the other backends run: ``onnx2fx`` converts it
into a ``torch.fx.GraphModule`` (weights become buffers). It needs only onnx
and torch -- onnx2torch would import torchvision, which does not load beside
this torch build.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper

from services.common.repository import TensorSpec


class ConversionFailed(RuntimeError):
    pass


def onnx_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (initializers excluded) and outputs of an ONNX graph, -1 for dynamic dims."""

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        return TensorSpec(value.name, dtype, dims)

    initializers = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def load_onnx_module(onnx_path: Path) -> tuple[torch.nn.Module, list[TensorSpec], list[TensorSpec]]:
    """The ONNX graph as an eval-mode torch module, with its input and output specs.

    The module takes the inputs positionally (graph order) and returns one
    tensor or a tuple in graph output order.
    """
    from onnx2fx import convert

    if not onnx_path.is_file():
        raise ConversionFailed(
            f"{onnx_path} does not exist: this model has no ONNX graph for an engine to run"
        )
    model = onnx.load(str(onnx_path))
    inputs, outputs = onnx_specs(model)
    try:
        module = convert(model)
    except Exception as exc:  # onnx2fx raises its own hierarchy and plain errors alike
        raise ConversionFailed(f"{onnx_path}: onnx2fx could not convert the graph: {exc}") from exc
    module.eval()
    return module, inputs, outputs


def as_tuple(result: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def to_compute(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    """Floating inputs become fp16 when the engine runs in half precision."""
    return tensor.half() if half and tensor.is_floating_point() else tensor


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating outputs leave the engine as fp32 whatever precision computed them."""
    return (
        tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
    )


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """max |a - b| / max |a| (NaN-safe: NaN or inf in the candidate gives inf)."""
    ref = reference.float()
    diff = (ref - candidate.float()).abs().max().item()
    scale = max(ref.abs().max().item(), 1e-6)
    value = diff / scale
    return value if np.isfinite(value) else float("inf")


class PinnedStaging:
    """Reused page-locked host buffers, one per tensor name, grown on demand.

    Pinned memory lets host<->device copies run asynchronously on the
    engine's stream; reusing the buffers avoids pinning on every batch.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def view(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        numel = int(np.prod(shape)) if len(shape) else 1
        flat = self._buffers.get(name)
        if flat is None or flat.dtype != dtype or flat.numel() < numel:
            flat = torch.empty(max(numel, 1), dtype=dtype, pin_memory=True)
            self._buffers[name] = flat
        return flat[:numel].view(*shape)

    def clear(self) -> None:
        self._buffers.clear()
