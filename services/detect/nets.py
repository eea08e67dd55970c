"""SSDLite-MobileNetV2 rebuilt in torch from a frozen TensorFlow graph's constants.

Instead of hand-writing the architecture, ``GraphNet`` walks the graph from
the box predictor outputs back to the preprocessed image and runs each node
with the torch equivalent (NHWC weights turned NCHW, TensorFlow's "SAME"
padding made explicit since it pads more on the bottom/right for stride 2).
Only the ops of the convolutional part are supported; the graph's own
preprocessing, anchor generation and post-processing (loops, NMS) are left
out: the service does them (``ssd.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from services.detect.tf_graph import FrozenGraph
from services.detect.torch_ops import needed, same_pad

SUPPORTED = {
    "Identity",
    "Conv2D",
    "DepthwiseConv2dNative",
    "FusedBatchNorm",
    "Relu6",
    "Add",
    "BiasAdd",
    "Reshape",
    "ConcatV2",
}


class GraphNet(nn.Module):
    """``images`` (N, 3, H, W), already scaled to [-1, 1] -> one tensor per requested output."""

    def __init__(self, graph: FrozenGraph, image_node: str, outputs: list[str]) -> None:
        super().__init__()
        self.image_node = image_node
        self.outputs = outputs
        self.order: list[str] = []
        self.ops: dict[str, tuple[str, list[str], dict[str, Any]]] = {}
        self.consts = nn.ParameterDict()
        self._visit_all(graph)

    def _param(self, graph: FrozenGraph, name: str, value: Any = None) -> str:
        key = name.replace("/", "__").replace(":", "_")
        if key not in self.consts:
            data = torch.from_numpy(graph.const(name) if value is None else value)
            self.consts[key] = nn.Parameter(data, requires_grad=False)
        return key

    def _visit_all(self, graph: FrozenGraph) -> None:
        def lower(name: str) -> list[str]:
            node = graph.node(name)
            if node.op not in SUPPORTED:
                raise ValueError(f"node {name}: op {node.op} is not supported")
            inputs, attrs = self._lower(graph, node)
            self.ops[name] = (node.op, inputs, attrs)
            return inputs

        self.order = needed(self.outputs, lower, {self.image_node})

    def _lower(self, graph: FrozenGraph, node: Any) -> tuple[list[str], dict[str, Any]]:
        """Data inputs to evaluate and static attributes (weights become parameters)."""
        ins = [i.split(":")[0] for i in node.input]
        op = node.op
        if op == "Identity":
            return [ins[0]], {}
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            if node.attr["data_format"].s not in (b"", b"NHWC"):
                raise ValueError(f"{node.name}: only NHWC graphs are supported")
            if any(d != 1 for d in node.attr["dilations"].list.i):
                raise ValueError(f"{node.name}: dilated convolutions are not supported")
            w = graph.const(ins[1])  # H, W, in, out (or multiplier)
            if op == "Conv2D":
                weight = w.transpose(3, 2, 0, 1)
            else:
                kh, kw, channels, mult = w.shape
                weight = w.transpose(2, 3, 0, 1).reshape(channels * mult, 1, kh, kw)
            return [ins[0]], {
                "weight": self._param(graph, ins[1], weight.copy()),
                "stride": int(node.attr["strides"].list.i[1]),
                "same": node.attr["padding"].s == b"SAME",
                "groups": w.shape[2] if op == "DepthwiseConv2dNative" else 1,
            }
        if op == "FusedBatchNorm":
            return [ins[0]], {
                "params": [self._param(graph, i) for i in ins[1:5]],
                "eps": float(node.attr["epsilon"].f),
            }
        if op == "Relu6":
            return [ins[0]], {}
        if op == "Add":
            return ins[:2], {}
        if op == "BiasAdd":
            return [ins[0]], {"bias": self._param(graph, ins[1])}
        if op == "Reshape":
            # Box predictor heads: (N, H, W, A * k) -> (N, H * W * A, k); k is the shape's last
            # entry.
            pack = graph.node(ins[1])
            return [ins[0]], {"last": int(graph.const(pack.input[-1]))}
        if op == "ConcatV2":
            axis = int(graph.const(ins[-1]))
            if axis != 1:
                raise ValueError(f"{node.name}: concat on axis {axis}, expected the anchor axis")
            return ins[:-1], {}
        raise AssertionError(op)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, torch.Tensor] = {self.image_node: images}
        for name in self.order:
            op, ins, a = self.ops[name]
            x = values[ins[0]]
            if op in ("Conv2D", "DepthwiseConv2dNative"):
                w = self.consts[a["weight"]]
                if a["same"]:
                    x = same_pad(x, (w.shape[2], w.shape[3]), (a["stride"], a["stride"]))
                y = F.conv2d(x, w, stride=a["stride"], groups=a["groups"])
            elif op == "FusedBatchNorm":
                gamma, beta, mean, var = (self.consts[p] for p in a["params"])
                y = F.batch_norm(x, mean, var, gamma, beta, training=False, eps=a["eps"])
            elif op == "Relu6":
                y = torch.clamp(x, 0.0, 6.0)
            elif op == "Add":
                y = x + values[ins[1]]
            elif op == "BiasAdd":
                y = x + self.consts[a["bias"]].view(1, -1, 1, 1)
            elif op == "Reshape":
                y = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, a["last"])
            elif op == "ConcatV2":
                y = torch.cat([values[i] for i in ins], dim=1)
            else:  # Identity
                y = x
            values[name] = y
        return tuple(values[o] for o in self.outputs)
