"""Several requests in one call (``<Method>Batch``): each item through the single-item path,
concurrently.

A video's sampled frames travel as one call per service: the items' model rows
reach the dynamic batchers together (one batch instead of three that happen to
meet inside the queue delay) and the gateway pays one round trip per service.
Items are answered in request order; a bad item fails the call naming its index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from services.common.errors import InvalidInput

# Bounds the pixels one call can carry before any is decoded (with the message size limit).
MAX_BATCH_ITEMS = 16

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def answer_each(
    requests: Sequence[Req], handle: Callable[[Req], Awaitable[Resp]]
) -> list[Resp]:
    if not requests:
        raise InvalidInput("batch has no requests")
    if len(requests) > MAX_BATCH_ITEMS:
        raise InvalidInput(
            f"batch has {len(requests)} requests: over the limit of {MAX_BATCH_ITEMS}"
        )

    async def one(index: int, request: Req) -> Resp:
        try:
            return await handle(request)
        except InvalidInput as exc:
            raise InvalidInput(f"requests[{index}]: {exc.message}") from exc

    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
