"""The base of every service's pipeline: it owns its served models and their lifecycle.

A pipeline creates its models with ``serve`` (or hands models it made to the
constructor); ``start`` loads them all before the server takes calls and
``close`` shuts them down after the drain. Servicers hold one pipeline and
delegate ``start``/``close`` to it (``services.common.server.Lifecycle``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from services.common.config import ModelConfig
from services.common.models import ServedModel


class Pipeline:
    def __init__(self, owned: Iterable[ServedModel] = ()) -> None:
        self._owned: list[ServedModel] = list(owned)

    def serve(self, config: ModelConfig) -> ServedModel:
        """A served model of this pipeline: started and closed with it."""
        model = ServedModel(config)
        self._owned.append(model)
        return model

    @property
    def served_models(self) -> list[ServedModel]:
        return list(self._owned)

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self._owned))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self._owned))
