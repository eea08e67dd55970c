"""Group commit for the hash collections' writes, whatever stores them (SQLite or Milvus).

Writers queue an operation and await its future; one committer task takes every
pending operation (up to ``max_batch``) and hands them to the backend's
``commit_batch`` as one batch, which settles each future. While it runs, new
writes queue for the next batch. ``drain`` lets the committer finish what it
holds before the backend closes. When a backend cannot go on (``fail``, or the
task dying), every queued writer gets UNAVAILABLE, health turns NOT_SERVING
(``HEALTHY`` and ``on_failure``) and later writes are refused at once.
``CommittedWrites`` gives a backend built on a committer that health interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from prometheus_client import Gauge

from services.common.errors import Unavailable

log = logging.getLogger(__name__)

HEALTHY = Gauge("visionmesh_hash_store_healthy", "1 while the store accepts writes")

OpT = TypeVar("OpT")
ResultT = TypeVar("ResultT")


class GroupCommitter(Generic[OpT, ResultT]):
    def __init__(
        self,
        what: str,
        max_batch: int,
        commit_batch: Callable[[list[tuple[OpT, asyncio.Future[ResultT]]]], Awaitable[bool]],
    ) -> None:
        # ``commit_batch`` settles every future of its batch and returns False when it has
        # failed the committer (``fail``), which then stops.
        self.what = what
        self.max_batch = max_batch
        self._commit_batch = commit_batch
        # Called once with the reason when the committer stops taking writes (health).
        self.on_failure: Callable[[str], None] | None = None
        self.failure = ""
        self._pending: list[tuple[OpT, asyncio.Future[ResultT]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self.what} committer")
        self._task.add_done_callback(self._ended)

    async def drain(self) -> None:
        """Let the committer finish what it holds, then stop it (a batch in its thread cannot
        be interrupted)."""
        if self._task is not None and not self._task.done():
            self._closing = True
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, op: OpT) -> ResultT:
        if self.failure:
            raise Unavailable(self.failure)
        if self._task is None or self._task.done() or self._closing:
            raise Unavailable(f"the {self.what} is not running")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wake.set()
        return await future

    def fail(self, reason: str) -> None:
        """Stop taking writes: queued writers get UNAVAILABLE, health turns NOT_SERVING."""
        if self.failure:
            return
        self.failure = reason
        HEALTHY.set(0)
        log.critical("%s stopped taking writes: %s", self.what, reason)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Unavailable(reason))
        self._pending = []
        if self.on_failure is not None:
            self.on_failure(reason)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (self._closing and task.exception() is None):
            return
        self.fail(
            self.failure
            or f"the {self.what} committer stopped: {task.exception()!r}; restart the service"
        )

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                if not self._pending:
                    return
                self._wake.set()  # come back after this batch, until nothing is left
            limit = self.max_batch
            batch, self._pending = self._pending[:limit], self._pending[limit:]
            if self._pending:
                self._wake.set()
            if batch and not await self._commit_batch(batch):
                return


class CommittedWrites:
    """The backend interface's health part for a backend whose writes go through
    ``self._committer``: why it stopped taking writes, and whom it tells."""

    _committer: GroupCommitter[Any, Any]

    @property
    def failure(self) -> str:
        return self._committer.failure

    @property
    def on_failure(self) -> Callable[[str], None] | None:
        return self._committer.on_failure

    @on_failure.setter
    def on_failure(self, hook: Callable[[str], None] | None) -> None:
        self._committer.on_failure = hook
