"""The steady-state throughput estimators of bench/load.py, on simulated servers."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

from bench.load import CpuPerItem, steady_rate, threads_use, worker_rate
from services.common.libc import name_os_thread


class BurstServer:
    """Answers every waiting call at once each ``period`` seconds, like a batcher whose batches
    take ``period``; the first batch only after ``fill`` seconds (a pipeline filling up)."""

    def __init__(self, period: float, fill: float) -> None:
        self.period, self.fill = period, fill
        self.waiting: list[asyncio.Future[None]] = []
        self.bursts: list[float] = []  # when each batch was answered
        self.ticker: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        await asyncio.sleep(self.fill)
        while True:
            await asyncio.sleep(self.period)
            batch, self.waiting = self.waiting, []
            self.bursts.append(time.perf_counter())
            for future in batch:
                future.set_result(None)

    async def call(self, _: int) -> None:
        if self.ticker is None:
            self.ticker = asyncio.ensure_future(self._tick())
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        await future


def test_bursts_count_whole_and_the_fill_is_not_timed() -> None:
    server = BurstServer(period=0.05, fill=0.3)

    async def run() -> float:
        try:
            return await steady_rate(server.call, concurrency=8, seconds=0.6, warm=0.4)
        finally:
            assert server.ticker is not None
            server.ticker.cancel()

    rate = asyncio.run(run())
    # 8 answers a burst, a burst every 50 ms as the clock kept it (sleeps overshoot a little):
    # about 160/s. The 0.3 s without answers at the start is outside the window, and a window
    # of clock boundaries could be off by a whole burst (8 of about 96 answers).
    ticks = server.bursts
    assert rate == pytest.approx(8 * (len(ticks) - 1) / (ticks[-1] - ticks[0]), rel=0.03)


def test_a_failing_call_ends_the_round_with_its_error() -> None:
    async def failing(k: int) -> None:
        await asyncio.sleep(0.001)
        if k == 20:
            raise RuntimeError("call 20 failed")

    with pytest.raises(RuntimeError, match="call 20 failed"):
        asyncio.run(steady_rate(failing, concurrency=4, seconds=5, warm=0))


def test_worker_rates_are_summed_over_each_workers_own_time() -> None:
    def step(k: int) -> int:
        # Worker 0 (even k) takes 20 ms a step, worker 1 (odd k) 60 ms: 50/s + 16.7/s.
        time.sleep(0.02 if k % 2 == 0 else 0.06)
        return 1

    assert worker_rate(step, workers=2, seconds=0.5) == pytest.approx(66.7, rel=0.15)


def test_cpu_per_item_counts_the_window_only() -> None:
    account = CpuPerItem({"me": os.getpid()})
    marks: list[int] = []

    def mark(items: int) -> None:
        marks.append(items)
        account.mark(items)

    def step(_: int) -> int:
        end = time.process_time() + 0.02  # 20 ms of CPU per item
        while time.process_time() < end:
            pass
        return 1

    worker_rate(step, workers=1, seconds=0.3, mark=mark)
    assert marks[0] == 0 and marks[1] >= 10
    # /proc counts in clock ticks (10 ms): 20 ms an item, within a tick per window.
    assert account.cpu_ms["me"][0] == pytest.approx(20, abs=10 / marks[1] + 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux only")
def test_threads_use_counts_the_named_threads_only() -> None:
    burned, done = threading.Event(), threading.Event()

    def burn() -> None:
        name_os_thread("burner-1")
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        burned.set()
        done.wait(10)

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        assert burned.wait(10)
        assert threads_use(os.getpid(), "burner-").cpu_s == pytest.approx(0.2, abs=0.05)
        assert threads_use(os.getpid(), "no-such-thread").cpu_s == 0
    finally:
        done.set()
        thread.join()
