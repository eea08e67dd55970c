"""A served model: its repository entry plus a dynamic batcher over its engines.

The batcher runs the model's own batching policy (``dynamic_batching`` in its
repository ``config.yaml``) with the service's explicit overrides applied; an
override the model cannot run is a ``ConfigError`` at start, never a silent clamp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.batcher import DynamicBatcher
from services.common.config import ModelConfig
from services.common.deadline import NO_DEADLINE, Deadline
from services.common.engines import create_engine
from services.common.repository import ModelEntry, load_entry


class ServedModel:
    """Load-on-start, batch-on-infer wrapper; one per model a service runs."""

    def __init__(self, config: ModelConfig, root: Path | None = None) -> None:
        self.config = config
        self.entry: ModelEntry = load_entry(config.name, config.version, root)
        self.batching = self.entry.batching_policy(config.batcher)
        self.batcher = DynamicBatcher(
            config.name, lambda: create_engine(self.entry, config.engine), self.batching
        )

    @property
    def name(self) -> str:
        return self.entry.name

    async def start(self) -> None:
        await self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def infer(
        self, inputs: dict[str, np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> dict[str, np.ndarray]:
        """Queue ``inputs`` behind the caller's deadline (if any)."""
        return await self.batcher.infer(inputs, deadline)
