"""Dynamic batching per model, with Triton's semantics.

Requests for one model queue up; a batch is formed when it holds
``max_batch_size`` rows or the oldest request has waited
``max_queue_delay_us``. The queue is bounded (``max_queue_size`` requests):
past it a request fails fast with RESOURCE_EXHAUSTED. A request whose deadline
passes while queued fails with DEADLINE_EXCEEDED and is never computed.

Admission reflects capacity, not only the queue's length: the batcher keeps an
EWMA of the engine seconds per row (``row_s``), and a request whose expected
wait (rows queued and computing, plus its own, times ``row_s``, shared by the
instances) is past its remaining deadline is refused at once with
RESOURCE_EXHAUSTED and a retry hint, instead of queueing into a deadline miss.
An idle batcher always admits, so the estimate is corrected by measurement.
Several engine instances (one worker each) drain the one queue.

Only requests whose inputs have the same per-row shape and dtype share a
batch, so callers with variable shapes (OCR crops) bucket them first.

Every request passes through here on the event loop (four per face call), so
the hand-offs are plain futures: a queued request wakes one idle worker, and a
worker waiting out the queue delay sleeps on a timer, not on a lock and
condition that every worker re-acquires at every request.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.common import libc as c_library
from services.common import metrics
from services.common.deadline import NO_DEADLINE, Deadline
from services.common.engines.base import Engine
from services.common.errors import DeadlineExceeded, Overloaded, Unavailable
from services.common.repository import BatchingPolicy

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass(eq=False)
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    signature: Signature
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    deadline: Deadline
    dequeued: float = field(default=0.0)


def _signature(inputs: Mapping[str, np.ndarray]) -> Signature:
    return tuple(sorted((name, arr.shape[1:], arr.dtype.str) for name, arr in inputs.items()))


class DynamicBatcher:
    """Queue + batch former + N engine workers for one model."""

    def __init__(
        self,
        name: str,
        engine_factory: Callable[[], Engine],
        config: BatchingPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.max_batch_size < 1 or config.instances < 1 or config.max_queue_size < 1:
            raise ValueError(
                f"batcher {name}: max_batch_size, instances and max_queue_size must be >= 1"
            )
        self.name = name
        self.config = config
        self._engine_factory = engine_factory
        self._clock = clock
        self._queue: collections.deque[_Request] = collections.deque()
        # Workers with nothing to run (or waiting out the queue delay), each on its own future:
        # a queued request wakes the first of them, close wakes them all.
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self._workers: list[asyncio.Task[None]] = []
        self._engines: list[Engine] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._delay = config.max_queue_delay_us / 1e6
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._queue_seconds = metrics.QUEUE_SECONDS.labels(name)
        self._compute_seconds = metrics.COMPUTE_SECONDS.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        # Admission: rows waiting or being computed, and the EWMA of engine seconds per row.
        self._queued_rows = 0
        self._running_rows = 0
        self.row_s = 0.0
        self._row_alpha = 0.2
        # Each engine's first batch pays one-off costs (allocations, lazy init): not measured.
        self._unmeasured = config.instances

    def expected_wait_s(self, rows: int) -> float:
        """Seconds until ``rows`` more would be computed, from the measured seconds per row."""
        ahead = self._queued_rows + self._running_rows + rows
        return ahead * self.row_s / self.config.instances

    def _observe(self, seconds: float, rows: int) -> None:
        if self._unmeasured > 0:
            self._unmeasured -= 1
            return
        sample = seconds / max(1, rows)
        self.row_s = (
            sample if self.row_s == 0.0 else self.row_s + self._row_alpha * (sample - self.row_s)
        )

    @property
    def engines(self) -> list[Engine]:
        return self._engines

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            self.config.instances,
            thread_name_prefix=f"engine-{self.name}",
            initializer=c_library.name_os_thread,
            initargs=(f"engine-{self.name}",),
        )
        # Engines load in the worker threads: a slow load never blocks the event loop.
        self._engines = list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, self._engine_factory)
                    for _ in range(self.config.instances)
                )
            )
        )
        self._workers = [
            asyncio.create_task(self._worker(e), name=f"batcher-{self.name}-{i}")
            for i, e in enumerate(self._engines)
        ]

    async def close(self) -> None:
        """Finish what is queued, then stop the workers and close the engines."""
        self._closing = True
        while self._idle:
            self._wake_one()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        for engine in self._engines:
            engine.close()
        if self._executor:
            self._executor.shutdown(wait=False)

    async def infer(
        self, inputs: Mapping[str, np.ndarray], deadline: Deadline = NO_DEADLINE
    ) -> dict[str, np.ndarray]:
        """Queue ``inputs`` (dim 0 = rows) and wait for its rows of every output.

        ``deadline.at`` is an absolute time on this batcher's clock (``time.monotonic``).
        """
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1:
            raise ValueError(
                f"batcher {self.name}: inputs disagree on the batch dimension: {sorted(rows)}"
            )
        (n,) = rows
        limit = self.config.max_batch_size
        if n <= limit:
            return await self._submit(arrays, n, deadline)
        # Larger than one batch: queue it as chunks and stitch the outputs back.
        parts = await asyncio.gather(
            *(
                self._submit(
                    {k: v[i : i + limit] for k, v in arrays.items()}, min(limit, n - i), deadline
                )
                for i in range(0, n, limit)
            )
        )
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _submit(
        self, arrays: dict[str, np.ndarray], rows: int, deadline: Deadline
    ) -> dict[str, np.ndarray]:
        if self._closing:
            raise Unavailable(f"model {self.name} is shutting down")
        if len(self._queue) >= self.config.max_queue_size:
            metrics.REJECTED.labels(self.name, "queue_full").inc()
            raise Overloaded(
                f"model {self.name} queue is full ({self.config.max_queue_size} requests waiting)"
            )
        now = self._clock()
        if deadline.passed(now):
            metrics.REJECTED.labels(self.name, "deadline").inc()
            raise DeadlineExceeded(f"deadline passed before model {self.name} was queued")
        left = deadline.remaining(now)
        busy = self._queued_rows + self._running_rows > 0
        if left is not None and busy and self.expected_wait_s(rows) > left:
            metrics.REJECTED.labels(self.name, "capacity").inc()
            drain = self.expected_wait_s(0)
            raise Overloaded(
                f"model {self.name} cannot compute this before its deadline: "
                f"~{self.expected_wait_s(rows):.2f}s "
                f"of work is ahead, {left:.2f}s is left; retry after {drain:.2f}s",
                retry_after_s=drain,
            )
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(arrays, rows, _signature(arrays), future, now, deadline))
        self._queued_rows += rows
        self._depth.set(len(self._queue))
        # Any woken worker looks at the whole queue (and the oldest request's window), so one
        # is enough: a request that the first cannot take is taken when it asks again.
        self._wake_one()
        return await future

    def _wake_one(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _sleep(self, timeout: float | None) -> None:
        """Until a request is queued, the batcher closes, or ``timeout`` seconds pass."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        timer = (
            None
            if timeout is None
            else asyncio.get_running_loop().call_later(timeout, self._time_up, waiter)
        )
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():  # the worker itself was cancelled
                self._idle.remove(waiter)
                waiter.cancel()

    def _time_up(self, waiter: asyncio.Future[None]) -> None:
        # Not done: nobody woke it, so it is still among the idle (and leaves them).
        if not waiter.done():
            self._idle.remove(waiter)
            waiter.set_result(None)

    def _drop_dead(self, now: float) -> None:
        """Fail queued requests whose deadline passed; forget cancelled ones."""
        kept: collections.deque[_Request] = collections.deque()
        for req in self._queue:
            if req.future.done():
                self._queued_rows -= req.rows
                continue
            if req.deadline.cancelled():  # the caller has gone: nobody waits for the answer
                self._queued_rows -= req.rows
                req.future.cancel()
                continue
            if req.deadline.passed(now):
                self._queued_rows -= req.rows
                metrics.REJECTED.labels(self.name, "deadline").inc()
                req.future.set_exception(
                    DeadlineExceeded(
                        f"deadline passed after {now - req.enqueued:.3f}s in model "
                        f"{self.name}'s queue"
                    )
                )
                continue
            kept.append(req)
        self._queue = kept

    def _candidates(self) -> tuple[list[_Request], int]:
        """The oldest request and, in FIFO order, the compatible ones that fit beside it."""
        first = self._queue[0]
        picked, rows = [first], first.rows
        for req in itertools.islice(self._queue, 1, None):
            if rows >= self.config.max_batch_size:
                break
            if req.signature == first.signature and rows + req.rows <= self.config.max_batch_size:
                picked.append(req)
                rows += req.rows
        return picked, rows

    async def _next_batch(self) -> list[_Request] | None:
        while True:
            self._drop_dead(self._clock())
            if not self._queue:
                if self._closing:
                    return None
                await self._sleep(None)
                continue
            picked, rows = self._candidates()
            now = self._clock()
            window_end = picked[0].enqueued + self._delay
            if rows >= self.config.max_batch_size or now >= window_end or self._closing:
                if len(picked) == len(self._queue):
                    self._queue.clear()
                else:
                    for req in picked:
                        self._queue.remove(req)
                for req in picked:
                    req.dequeued = now
                self._queued_rows -= rows
                self._running_rows += rows
                self._depth.set(len(self._queue))
                if self._queue:  # what this batch left is another idle worker's
                    self._wake_one()
                return picked
            await self._sleep(window_end - now)

    async def _worker(self, engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        stacker = BatchStacker()
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            for req in batch:
                self._queue_seconds.observe(req.dequeued - req.enqueued)
            inputs = [r.inputs for r in batch]
            total = sum(r.rows for r in batch)
            start = time.perf_counter()
            try:
                # Stacking copies the whole batch: it runs in the engine's thread, not on the
                # event loop, which meanwhile keeps receiving and answering calls.
                outputs = await loop.run_in_executor(
                    self._executor, _stack_and_infer, engine, stacker, inputs
                )
            except (
                Exception
            ) as exc:  # the engine failed this batch: every request in it gets the error
                log.exception("engine %s failed a batch of %d", self.name, total)
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            finally:
                self._running_rows -= total
            took = time.perf_counter() - start
            self._observe(took, total)
            self._compute_seconds.observe(took)
            self._batch_size.observe(total)
            offset = 0
            for req in batch:
                part = {k: v[offset : offset + req.rows] for k, v in outputs.items()}
                offset += req.rows
                if not req.future.done():
                    req.future.set_result(part)


class BatchStacker:
    """One engine instance's batch inputs: the requests' rows concatenated into buffers kept
    from one batch to the next.

    A fresh batch-sized array (tens of MB at batch 32 for image models) is above the
    allocator's mmap threshold (services/common/memory.py), so every batch had its pages
    zero-filled and faulted in again: about 300 page faults per image in the classify
    service. A kept buffer is written in place. Only buffers up to ``KEEP_BYTES`` are kept,
    so an instance holds at most that much per input between batches; larger batches are
    allocated as before.
    """

    KEEP_BYTES = 32 * 1024 * 1024

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def stack(self, inputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if len(inputs) == 1:
            return dict(inputs[0])
        return {name: self._concatenate(name, [i[name] for i in inputs]) for name in inputs[0]}

    def _concatenate(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        first = parts[0]
        shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
        nbytes = math.prod(shape) * first.dtype.itemsize
        if nbytes > self.KEEP_BYTES:
            return np.concatenate(parts)
        kept = self._buffers.get(name)
        if kept is None or kept.nbytes < nbytes:
            # Sized for this batch; a larger one later replaces it (at most KEEP_BYTES).
            kept = self._buffers[name] = np.empty(nbytes, dtype=np.uint8)
        out = kept[:nbytes].view(first.dtype).reshape(shape)
        np.concatenate(parts, out=out)
        return out


def _stack_and_infer(
    engine: Engine, stacker: BatchStacker, inputs: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """One engine run on the requests' inputs concatenated along the batch axis (the stacker's
    buffers are reused by the next batch: nothing may keep a reference to them past the run)."""
    return engine.infer(stacker.stack(inputs))
