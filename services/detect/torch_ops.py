"""Torch pieces shared by the rebuilt networks (``nets.GraphNet``, ``tflite_net.TfliteNet``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
import torch.nn.functional as F

Node = TypeVar("Node", bound=Hashable)


def same_pad(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """TensorFlow's "SAME" padding of an NCHW tensor made explicit.

    For a stride above 1 TensorFlow pads one more on the bottom / right than on the
    top / left, which no symmetric torch padding reproduces. ``kernel`` and ``stride``
    are (height, width).
    """
    pads = []
    for size, k, s in zip((x.shape[3], x.shape[2]), kernel[::-1], stride[::-1], strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def needed(
    outputs: list[Node], inputs_of: Callable[[Node], list[Node]], stop: set[Node]
) -> list[Node]:
    """Nodes ``outputs`` depend on, each after its inputs (iterative post-order: graphs are deep).

    ``inputs_of`` gives the nodes a node reads (called once per node, so it may
    also record the node); nodes in ``stop`` (the graph's inputs) are not visited.
    """
    order: list[Node] = []
    seen: set[Node] = set()
    stack = [(o, False) for o in reversed(outputs)]
    while stack:
        name, done = stack.pop()
        if done:
            order.append(name)
            continue
        if name in seen or name in stop:
            continue
        seen.add(name)
        stack.append((name, True))
        stack += [(i, False) for i in reversed(inputs_of(name))]
    return order
