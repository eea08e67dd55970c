"""Throughput at saturation, measured in steady state.

A round that starts its callers at t0 and stops them at t0 + seconds times two
transients besides the steady state: the pipeline filling (no model has work
until the first requests are preprocessed and batched) and draining (the last
batches run with fewer and fewer callers left). Both waste cores that a service
under sustained load keeps busy, and they waste more of a deep pipeline than of a
shallow one, so they bias a comparison. Here the load runs before and after the
timed window:

- ``steady_rate``: ``concurrency`` async callers call back to back; after ``warm``
  seconds, completions are counted from the first one in the window to the first
  one after it. Both ends are completion times, so a batch that answers many
  callers at once is counted whole or not at all (a window of wall-clock
  boundaries would count a burst of ``max_batch_size`` answers or miss it, a
  quantisation of a whole batch per window).
- ``worker_rate``: threads, each doing whole steps (a batch); each worker's rate
  is its own steps over its own time from start to its last step's end, and the
  side's rate is their sum, so the worker that finishes first does not idle
  inside the timed region while the other ends its last batch.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


async def steady_rate(
    call: Callable[[int], Awaitable[object]],
    concurrency: int,
    seconds: float,
    warm: float = 1.0,
    mark: Callable[[int], None] | None = None,
) -> float:
    """Completions/s of ``call(k)`` (``k`` counts calls) under ``concurrency`` callers, over about
    ``seconds`` of steady load after ``warm`` seconds of the same load. ``mark(0)`` is called
    when the window opens, ``mark(n)`` when it closes after ``n`` completions."""
    if concurrency < 1 or seconds <= 0:
        raise ValueError("concurrency must be >= 1 and seconds > 0")
    started = 0
    done: list[float] = []  # completion times
    opened: float | None = None  # time of the first completion in the window
    closed: float | None = None  # time of the first completion after the window
    window = asyncio.get_running_loop().create_future()
    load_start = time.perf_counter()
    window_start = load_start + warm
    window_end = window_start + seconds

    async def caller() -> None:
        nonlocal started, opened, closed
        while not window.done():
            k = started
            started += 1
            try:
                await call(k)
            except BaseException as exc:  # a failed call ends the round with its error
                if not window.done():
                    window.set_exception(exc)
                raise
            now = time.perf_counter()
            done.append(now)
            if opened is None and now >= window_start:
                opened = len(done) - 1
                if mark is not None:
                    mark(0)
            elif opened is not None and now >= window_end and closed is None:
                closed = len(done) - 1
                if mark is not None:
                    mark(closed - opened)
                window.set_result(None)

    tasks = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
    try:
        await window
        await asyncio.gather(*tasks)  # drain: each caller ends after its call in flight
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert opened is not None and closed is not None
    span = done[closed] - done[opened]
    return (closed - opened) / span if span > 0 else 0.0


def worker_rate(
    step: Callable[[int], int],
    workers: int,
    seconds: float,
    mark: Callable[[int], None] | None = None,
) -> float:
    """Items/s of ``workers`` threads each repeating ``step(k)`` (returns items done; ``k``
    counts that worker's steps, offset by worker) for ``seconds``: the sum of the workers'
    own rates. ``mark(0)`` is called before the workers start, ``mark(n)`` after they end
    with ``n`` items."""
    stop_at = time.perf_counter() + seconds

    def worker(index: int) -> tuple[int, float]:
        items, k, start = 0, index, time.perf_counter()
        while True:
            items += step(k)
            k += workers
            end = time.perf_counter()
            if end >= stop_at:
                return items, items / (end - start)

    if mark is not None:
        mark(0)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(worker, range(workers)))
    total = sum(items for items, _ in results)
    if mark is not None:
        mark(total)
    return sum(rate for _, rate in results)


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds and minor page faults of a process so far, from /proc (Linux)."""

    cpu_s: float
    faults: int

    @classmethod
    def of(cls, pid: int) -> CpuUse:
        return cls.read(Path(f"/proc/{pid}/stat"))

    @classmethod
    def read(cls, stat: Path) -> CpuUse:
        """From a ``stat`` file of /proc (a process's, or a thread's under ``task/``)."""
        # After the ")" of the command name: minflt is field 7, utime 11, stime 12 (proc(5)).
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return cls((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7]))

    def __sub__(self, other: CpuUse) -> CpuUse:
        return CpuUse(self.cpu_s - other.cpu_s, self.faults - other.faults)

    def __add__(self, other: CpuUse) -> CpuUse:
        return CpuUse(self.cpu_s + other.cpu_s, self.faults + other.faults)


def threads_use(pid: int, prefix: str) -> CpuUse:
    """CPU and page faults so far of ``pid``'s threads whose OS name starts with ``prefix``
    (a thread that ended is no longer counted)."""
    total = CpuUse(0.0, 0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(prefix):
                total = total + CpuUse.read(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
    return total


class CpuPerItem:
    """CPU ms and page faults per item of named processes over steady-state windows: pass
    ``mark`` to ``steady_rate`` (it is called when the window opens and when it closes).

    ``threads`` names groups of one process's threads as well: label -> (pid, OS thread-name
    prefix), e.g. a service's engine threads."""

    def __init__(
        self, pids: dict[str, int], threads: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.pids = pids
        self.threads = threads or {}
        self._start: dict[str, CpuUse] = {}
        names = [*pids, *self.threads]
        self.cpu_ms: dict[str, list[float]] = {name: [] for name in names}
        self.faults: dict[str, list[float]] = {name: [] for name in names}

    def mark(self, items: int) -> None:
        """Window open (``items`` 0: remember where each process stands) or closed after
        ``items``."""
        now = {name: CpuUse.of(pid) for name, pid in self.pids.items()}
        now.update({name: threads_use(*group) for name, group in self.threads.items()})
        if not items:
            self._start = now
            return
        for name, use in now.items():
            used = use - self._start[name]
            self.cpu_ms[name].append(used.cpu_s * 1000 / items)
            self.faults[name].append(used.faults / items)
