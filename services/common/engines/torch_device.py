"""Torch-side pieces both GPU backends (torch, TensorRT) use: devices, precisions, dtypes."""

from __future__ import annotations

import numpy as np
import torch

from services.common.engines.base import EngineError

PRECISIONS = ("fp32", "fp16")


def parse_device(name: str) -> torch.device:
    """``cpu`` or ``cuda:N`` as a torch device, or an ``EngineError`` saying why not."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EngineError(
            f"engine device {name!r} is not a torch device (use cpu or cuda:N)"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"engine device {name!r}: this torch build or machine has no CUDA")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"engine device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise EngineError(f"engine device {name!r}: the torch backend runs on cpu or cuda")
    return device


def torch_dtype(numpy_dtype: str | np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype (``float32`` -> ``torch.float32``)."""
    return torch.from_numpy(np.zeros(0, dtype=numpy_dtype)).dtype
