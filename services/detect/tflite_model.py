"""Read a TensorFlow Lite model (a FlatBuffer) into plain Python: tensors, constants, operators.

The ``tflite`` package is the generated FlatBuffer reader of TensorFlow Lite's
schema (no interpreter, no TensorFlow); this module turns what it reads into
small records ``tflite_net.TfliteNet`` rebuilds in torch. Weights stored as
float16 behind a ``DEQUANTIZE`` operator are returned as the float32 tensor the
operator produces, and the ``DEQUANTIZE`` itself is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tflite

# TensorFlow Lite TensorType values this reader understands.
DTYPES: dict[int, Any] = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT64: np.int64,
}
OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
# Builtin options table of each operator kind, and the fields read from it.
OPTIONS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "CONV_2D": (
        tflite.Conv2DOptions,
        (
            "Padding",
            "StrideW",
            "StrideH",
            "FusedActivationFunction",
            "DilationWFactor",
            "DilationHFactor",
        ),
    ),  # fmt: skip
    "DEPTHWISE_CONV_2D": (
        tflite.DepthwiseConv2DOptions,
        (
            "Padding",
            "StrideW",
            "StrideH",
            "DepthMultiplier",
            "FusedActivationFunction",
            "DilationWFactor",
            "DilationHFactor",
        ),
    ),  # fmt: skip
    "ADD": (tflite.AddOptions, ("FusedActivationFunction",)),
    "MAX_POOL_2D": (
        tflite.Pool2DOptions,
        ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"),
    ),  # fmt: skip
    "RESIZE_BILINEAR": (tflite.ResizeBilinearOptions, ("AlignCorners", "HalfPixelCenters")),
}


@dataclass
class Operator:
    kind: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]  # tensor indices; -1 = optional input left out
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: Any


class TfliteModel:
    """The first subgraph of a ``.tflite`` file: tensors, constant values and operators in order."""

    def __init__(self, data: bytes) -> None:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise ValueError(f"expected one subgraph, found {model.SubgraphsLength()}")
        graph = model.Subgraphs(0)
        self.tensors: list[TensorInfo] = []
        self._consts: dict[int, np.ndarray] = {}
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            dtype = DTYPES.get(t.Type())
            shape = [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []
            self.tensors.append(TensorInfo(t.Name().decode(), shape, dtype))
            buffer = model.Buffers(t.Buffer())
            if buffer is not None and buffer.DataLength():
                if dtype is None:
                    raise ValueError(f"tensor {i} ({self.tensors[i].name}): type {t.Type()}")
                raw = buffer.DataAsNumpy().tobytes()
                self._consts[i] = np.frombuffer(raw, dtype).reshape(shape).copy()
        self.inputs = [int(i) for i in graph.InputsAsNumpy()]
        self.outputs = [int(i) for i in graph.OutputsAsNumpy()]
        self.operators: list[Operator] = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            # Newer files keep the code in BuiltinCode, older ones in the deprecated byte.
            kind = OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            ins = [int(x) for x in op.InputsAsNumpy()]
            outs = [int(x) for x in op.OutputsAsNumpy()]
            if kind == "DEQUANTIZE" and ins[0] in self._consts:
                self._consts[outs[0]] = self._consts[ins[0]].astype(np.float32)
                continue
            self.operators.append(Operator(kind, ins, outs, _options(kind, op)))

    def is_const(self, index: int) -> bool:
        return index in self._consts

    def const(self, index: int) -> np.ndarray:
        if index not in self._consts:
            raise ValueError(f"tensor {index} ({self.tensors[index].name}) is not a constant")
        return self._consts[index]

    def index(self, name: str) -> int:
        """Index of the tensor called ``name``."""
        for i, t in enumerate(self.tensors):
            if t.name == name:
                return i
        raise KeyError(f"no tensor named {name}")


def _options(kind: str, op: Any) -> dict[str, Any]:
    if kind == "RESHAPE" and op.BuiltinOptions() is not None:
        table = tflite.ReshapeOptions()
        raw = op.BuiltinOptions()
        table.Init(raw.Bytes, raw.Pos)
        return {"NewShape": [int(d) for d in table.NewShapeAsNumpy()]}
    if kind not in OPTIONS:
        return {}
    cls, names = OPTIONS[kind]
    raw = op.BuiltinOptions()
    table = cls()
    table.Init(raw.Bytes, raw.Pos)
    return {name: getattr(table, name)() for name in names}
