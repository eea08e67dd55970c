"""The engine interface (load, describe inputs/outputs, infer a batch) and the backend registry.

Backends register a factory by name; services never import a backend
directly, so adding ``torch`` or ``tensorrt`` touches no service code.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from services.common.config import EngineConfig
from services.common.repository import ModelEntry, TensorSpec


class EngineError(RuntimeError):
    pass


class Engine(abc.ABC):
    """One loaded instance of a model. ``infer`` may be called from a worker thread."""

    def __init__(self, entry: ModelEntry, config: EngineConfig) -> None:
        self.entry = entry
        self.config = config

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights; called once before the first ``infer``."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch (dim 0 is the batch); returns every output by name."""

    def close(self) -> None:  # noqa: B027 - optional hook: most engines hold nothing to release
        """Release resources (sessions, device memory)."""


def ordered_inputs(
    model: str, specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """``inputs`` in the model's input order, contiguous and of the declared dtypes."""
    missing = [s.name for s in specs if s.name not in inputs]
    if missing:
        raise EngineError(f"model {model}: missing input(s) {', '.join(missing)}")
    return [np.ascontiguousarray(inputs[s.name], dtype=s.dtype) for s in specs]


class SpecsFromLoad(Engine):
    """An engine whose ``load`` fills ``_inputs`` / ``_outputs`` itself (torch, TensorRT)."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)


EngineFactory = Callable[[ModelEntry, EngineConfig], Engine]

# Backend name -> "module:attribute" imported on first use, so optional
# dependencies (torch, tensorrt) load only where they are configured.
_BACKENDS: dict[str, str | EngineFactory] = {
    "onnxruntime": "services.common.engines.onnxruntime_backend:OnnxRuntimeEngine",
    "torch": "services.common.engines.torch_backend:TorchEngine",
    "tensorrt": "services.common.engines.tensorrt_backend:TensorRTEngine",
}


def register_backend(name: str, factory: str | EngineFactory) -> None:
    _BACKENDS[name] = factory


def create_engine(entry: ModelEntry, config: EngineConfig) -> Engine:
    target = _BACKENDS.get(config.backend)
    if target is None:
        raise EngineError(
            f"unknown engine backend {config.backend!r}; known: {', '.join(sorted(_BACKENDS))}"
        )
    if isinstance(target, str):
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineError(f"backend {config.backend!r} is not available here: {exc}") from exc
        factory: EngineFactory = getattr(module, attr)
    else:
        factory = target
    engine = factory(entry, config)
    engine.load()
    return engine
