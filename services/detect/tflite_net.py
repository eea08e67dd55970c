"""A TensorFlow Lite model rebuilt in torch from its own operators and constants.

Like ``nets.GraphNet`` for frozen TensorFlow graphs: ``TfliteNet`` walks the
operators the requested outputs depend on (``tflite_model.TfliteModel``) and
runs each with the torch equivalent, so the network exports to ONNX and runs on
the project's engines. Tensors are kept NCHW (TensorFlow Lite's are NHWC):
weights are transposed once, "SAME" padding is made explicit (TensorFlow pads
more on the bottom / right for stride 2) and a reshape to a flat head output
flattens in NHWC order. Only the operators a convolutional network needs are
supported; anything else is refused by name when the net is built.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from services.detect.tflite_model import Operator, TfliteModel
from services.detect.torch_ops import needed, same_pad

SUPPORTED = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "ADD",
    "PAD",
    "MAX_POOL_2D",
    "RESIZE_BILINEAR",
    "RESHAPE",
    "LOGISTIC",
}
# TensorFlow Lite's ActivationFunctionType values: NONE, RELU, RELU6.
ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}
SAME = 0  # tflite.Padding.SAME (VALID is 1)


def _activation(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    if kind == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if kind == "relu":
        return torch.relu(x)
    return x


class TfliteNet(nn.Module):
    """``(N, C, H, W)`` float input -> the named output tensors (2-D heads or NCHW maps)."""

    def __init__(self, model: TfliteModel, outputs: list[str]) -> None:
        super().__init__()
        if len(model.inputs) != 1:
            raise ValueError(f"expected one input, the model has {len(model.inputs)}")
        self.input = model.inputs[0]
        self.outputs = [model.index(name) for name in outputs]
        self.consts = nn.ParameterDict()
        self.steps: list[tuple[str, list[int], int, dict[str, Any]]] = []
        producer: dict[int, Operator] = {}
        for op in model.operators:
            for out in op.outputs:
                producer[out] = op

        def inputs_of(tensor: int) -> list[int]:
            if tensor not in producer:
                raise ValueError(f"tensor {tensor} ({model.tensors[tensor].name}) has no producer")
            op = producer[tensor]
            if op.kind not in SUPPORTED:
                raise ValueError(f"operator {op.kind} (tensor {model.tensors[tensor].name})")
            if len(op.outputs) != 1:
                raise ValueError(f"operator {op.kind} has {len(op.outputs)} outputs")
            return [i for i in op.inputs if i >= 0 and not model.is_const(i)]

        for tensor in needed(self.outputs, inputs_of, {self.input}):
            op = producer[tensor]
            data, attrs = self._lower(model, op)
            self.steps.append((op.kind, data, tensor, attrs))

    def _param(self, model: TfliteModel, index: int, value: Any) -> str:
        key = f"t{index}"
        if key not in self.consts:
            self.consts[key] = nn.Parameter(torch.from_numpy(value.copy()), requires_grad=False)
        return key

    def _lower(self, model: TfliteModel, op: Operator) -> tuple[list[int], dict[str, Any]]:
        """Data inputs of ``op`` and its static attributes (weights become parameters)."""
        o, ins = op.options, op.inputs
        kind = op.kind
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            if (o["DilationWFactor"], o["DilationHFactor"]) != (1, 1):
                raise ValueError(f"{kind}: dilated convolutions are not supported")
            w = model.const(ins[1])
            if kind == "CONV_2D":  # out, kh, kw, in -> out, in, kh, kw
                weight, groups = w.transpose(0, 3, 1, 2), 1
            else:  # 1, kh, kw, channels x multiplier -> channels x multiplier, 1, kh, kw
                weight = w.transpose(3, 0, 1, 2)
                groups = model.tensors[ins[0]].shape[3]
            bias = (
                self._param(model, ins[2], model.const(ins[2])) if ins[2:] and ins[2] >= 0 else None
            )
            return [ins[0]], {
                "weight": self._param(model, ins[1], weight),
                "bias": bias,
                "stride": (o["StrideH"], o["StrideW"]),
                "same": o["Padding"] == SAME,
                "groups": groups,
                "act": self._act(o),
            }
        if kind == "ADD":
            if any(model.is_const(i) for i in ins):
                raise ValueError("ADD of a constant is not supported")
            return ins[:2], {"act": self._act(o)}
        if kind == "PAD":
            pads = model.const(ins[1])  # [[batch], [top, bottom], [left, right], [channels]]
            if pads[0].any() or pads[3].any():
                raise ValueError(f"PAD of the batch or channel axis: {pads.tolist()}")
            return [ins[0]], {"pads": [int(pads[2][0]), int(pads[2][1]), int(pads[1][0]),
                                       int(pads[1][1])]}  # fmt: skip
        if kind == "MAX_POOL_2D":
            if o["Padding"] == SAME:
                raise ValueError("MAX_POOL_2D with SAME padding is not supported")
            return [ins[0]], {
                "kernel": (o["FilterHeight"], o["FilterWidth"]),
                "stride": (o["StrideH"], o["StrideW"]),
                "act": self._act(o),
            }
        if kind == "RESIZE_BILINEAR":
            # torch's align_corners=False is TensorFlow's half_pixel_centers (both clamp at 0).
            if o["AlignCorners"] or not o["HalfPixelCenters"]:
                raise ValueError(f"RESIZE_BILINEAR {o} is not supported (half-pixel centres only)")
            size = model.const(ins[1])
            return [ins[0]], {"size": (int(size[0]), int(size[1]))}
        if kind == "RESHAPE":
            shape = o.get("NewShape") or [int(d) for d in model.const(ins[1])]
            if len(shape) != 2 or shape[0] not in (1, -1):
                raise ValueError(f"RESHAPE to {shape}: only flat (batch, n) outputs are supported")
            return [ins[0]], {"width": int(shape[1])}
        if kind == "LOGISTIC":
            return [ins[0]], {}
        raise AssertionError(kind)

    @staticmethod
    def _act(options: dict[str, Any]) -> str | None:
        code = int(options["FusedActivationFunction"])
        if code not in ACTIVATIONS:
            raise ValueError(f"fused activation {code} is not supported")
        return ACTIVATIONS[code]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[int, torch.Tensor] = {self.input: images}
        for kind, ins, out, a in self.steps:
            x = values[ins[0]]
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = self.consts[a["weight"]]
                if a["same"]:
                    x = same_pad(x, (w.shape[2], w.shape[3]), a["stride"])
                b = self.consts[a["bias"]] if a["bias"] else None
                y = F.conv2d(x, w, b, stride=a["stride"], groups=a["groups"])
                y = _activation(y, a["act"])
            elif kind == "ADD":
                y = _activation(x + values[ins[1]], a["act"])
            elif kind == "PAD":
                y = F.pad(x, a["pads"])
            elif kind == "MAX_POOL_2D":
                y = _activation(F.max_pool2d(x, a["kernel"], a["stride"]), a["act"])
            elif kind == "RESIZE_BILINEAR":
                y = F.interpolate(x, size=a["size"], mode="bilinear", align_corners=False)
            elif kind == "RESHAPE":
                y = (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).reshape(x.shape[0], a["width"])
            else:  # LOGISTIC
                y = torch.sigmoid(x)
            values[out] = y
        return tuple(values[o] for o in self.outputs)
