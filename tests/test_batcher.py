"""Dynamic batcher semantics: batch forming, delay, overload, deadline, instances."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from services.common.batcher import BatchStacker, DynamicBatcher
from services.common.config import EngineConfig
from services.common.deadline import Deadline
from services.common.engines.base import Engine
from services.common.errors import DeadlineExceeded, Overloaded
from services.common.repository import BatchingPolicy, ModelEntry, TensorSpec


class RecordingEngine(Engine):
    """A tiny real computation (x * 2 + row sum) that records every batch it ran."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(ModelEntry("double", 1, None, [], [], 0), EngineConfig())  # type: ignore[arg-type]
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.native_ids: set[int] = set()

    def load(self) -> None:
        pass

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "float32", (-1, 4))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", "float32", (-1, 4))]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(int(inputs["x"].shape[0]))
        self.threads.add(threading.current_thread().name)
        self.native_ids.add(threading.get_native_id())
        if self.delay_s:
            time.sleep(self.delay_s)
        x = inputs["x"]
        return {"y": x * 2, "s": x.sum(axis=1)}


async def make(engines: list[RecordingEngine], **cfg: int) -> DynamicBatcher:
    it = iter(engines)
    batcher = DynamicBatcher(
        "test", lambda: next(it), BatchingPolicy(instances=len(engines), **cfg)
    )
    await batcher.start()
    return batcher


def rows(n: int, value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), value, np.float32)}


async def test_requests_in_the_window_share_one_batch_and_get_their_own_rows() -> None:
    engine = RecordingEngine()
    batcher = await make([engine], max_batch_size=8, max_queue_delay_us=50_000, max_queue_size=100)
    results = await asyncio.gather(*(batcher.infer(rows(1, float(i))) for i in range(5)))
    await batcher.close()
    assert engine.batches == [5]
    for i, out in enumerate(results):
        np.testing.assert_allclose(out["y"], np.full((1, 4), 2.0 * i))
        np.testing.assert_allclose(out["s"], [4.0 * i])


async def test_full_batch_runs_without_waiting_for_the_delay() -> None:
    engine = RecordingEngine()
    batcher = await make(
        [engine], max_batch_size=4, max_queue_delay_us=5_000_000, max_queue_size=100
    )
    start = time.perf_counter()
    await asyncio.gather(*(batcher.infer(rows(1, 1.0)) for _ in range(4)))
    elapsed = time.perf_counter() - start
    await batcher.close()
    assert engine.batches == [4]
    assert elapsed < 1.0, "a full batch must not wait for max_queue_delay"


async def test_lone_request_waits_at_most_the_delay() -> None:
    engine = RecordingEngine()
    batcher = await make(
        [engine], max_batch_size=64, max_queue_delay_us=100_000, max_queue_size=100
    )
    start = time.perf_counter()
    await batcher.infer(rows(1, 1.0))
    elapsed = time.perf_counter() - start
    await batcher.close()
    assert 0.09 <= elapsed < 1.0
    assert engine.batches == [1]


async def test_batches_never_exceed_max_batch_size_and_big_requests_are_split() -> None:
    engine = RecordingEngine()
    batcher = await make([engine], max_batch_size=4, max_queue_delay_us=20_000, max_queue_size=100)
    outs = await asyncio.gather(
        batcher.infer(rows(10, 3.0)), *(batcher.infer(rows(3, 1.0)) for _ in range(3))
    )
    await batcher.close()
    assert max(engine.batches) <= 4
    assert sum(engine.batches) == 10 + 9
    assert outs[0]["y"].shape == (10, 4)
    np.testing.assert_allclose(outs[0]["y"], 6.0)


async def test_different_shapes_are_not_mixed() -> None:
    engine = RecordingEngine()
    batcher = await make([engine], max_batch_size=8, max_queue_delay_us=30_000, max_queue_size=100)
    a = {"x": np.ones((1, 4), np.float32)}
    b = {"x": np.ones((1, 6), np.float32)}
    await asyncio.gather(batcher.infer(a), batcher.infer(b), batcher.infer(a))
    await batcher.close()
    assert sorted(engine.batches) == [1, 2]


async def test_full_queue_fails_fast_with_resource_exhausted() -> None:
    engine = RecordingEngine(delay_s=0.2)
    batcher = await make([engine], max_batch_size=1, max_queue_delay_us=0, max_queue_size=2)
    tasks = [asyncio.create_task(batcher.infer(rows(1, 1.0))) for _ in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.close()
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert overloaded, "past max_queue_size requests must be refused"
    assert overloaded[0].code.name == "RESOURCE_EXHAUSTED"
    assert len(served) + len(overloaded) == 6
    assert len(engine.batches) == len(served)


async def test_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    engine = RecordingEngine(delay_s=0.3)
    batcher = await make([engine], max_batch_size=1, max_queue_delay_us=0, max_queue_size=10)
    busy = asyncio.create_task(batcher.infer(rows(1, 1.0)))
    await asyncio.sleep(0.05)  # the engine is now busy for 0.3 s
    doomed = {"x": np.full((1, 4), 7.0, np.float32)}
    with pytest.raises(DeadlineExceeded) as info:
        await batcher.infer(doomed, deadline=Deadline(time.monotonic() + 0.1))
    await busy
    await batcher.close()
    assert info.value.code.name == "DEADLINE_EXCEEDED"
    assert engine.batches == [1], "the expired request must not reach the engine"


async def test_expired_deadline_is_refused_before_queueing() -> None:
    engine = RecordingEngine()
    batcher = await make([engine], max_batch_size=4, max_queue_delay_us=0, max_queue_size=10)
    with pytest.raises(DeadlineExceeded):
        await batcher.infer(rows(1, 1.0), deadline=Deadline(time.monotonic() - 1))
    await batcher.close()
    assert engine.batches == []


async def test_several_instances_drain_one_queue_in_parallel() -> None:
    engines = [RecordingEngine(delay_s=0.2), RecordingEngine(delay_s=0.2)]
    batcher = await make(engines, max_batch_size=1, max_queue_delay_us=0, max_queue_size=10)
    start = time.perf_counter()
    await asyncio.gather(*(batcher.infer(rows(1, 1.0)) for _ in range(4)))
    elapsed = time.perf_counter() - start
    await batcher.close()
    assert all(e.batches for e in engines), "both instances must take work"
    assert elapsed < 0.75, (
        f"two instances should halve the time of four 0.2 s batches, took {elapsed:.2f}s"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names: Linux only")
async def test_engine_threads_carry_the_batchers_name_where_the_os_shows_it() -> None:
    engine = RecordingEngine()
    batcher = await make([engine], max_batch_size=4, max_queue_delay_us=0, max_queue_size=10)
    await batcher.infer(rows(1, 1.0))
    (tid,) = engine.native_ids
    try:
        assert Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "engine-test"
    finally:
        await batcher.close()


async def test_engine_error_reaches_every_request_of_the_batch_and_the_batcher_survives() -> None:
    class Failing(RecordingEngine):
        def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            if inputs["x"][0, 0] < 0:
                raise RuntimeError("bad batch")
            return super().infer(inputs)

    batcher = await make([Failing()], max_batch_size=4, max_queue_delay_us=0, max_queue_size=10)
    with pytest.raises(RuntimeError, match="bad batch"):
        await batcher.infer(rows(1, -1.0))
    ok = await batcher.infer(rows(1, 2.0))
    await batcher.close()
    np.testing.assert_allclose(ok["y"], 4.0)


def test_the_stacker_writes_each_batch_into_the_buffer_it_kept() -> None:
    stacker = BatchStacker()
    first = stacker.stack([rows(2, 1.0), rows(3, 2.0)])["x"]
    np.testing.assert_array_equal(first[:, 0], [1, 1, 2, 2, 2])
    second = stacker.stack([rows(1, 5.0), rows(2, 6.0)])["x"]
    np.testing.assert_array_equal(second[:, 0], [5, 6, 6])
    assert np.shares_memory(first, second)  # no new batch-sized allocation
    assert stacker.stack([rows(2, 7.0)])["x"].shape == (2, 4)  # one request: its own array


def test_the_stacker_keeps_no_buffer_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchStacker, "KEEP_BYTES", 64)  # 4 rows of 4 float32
    stacker = BatchStacker()
    big = stacker.stack([rows(3, 1.0), rows(3, 2.0)])["x"]
    again = stacker.stack([rows(3, 1.0), rows(3, 2.0)])["x"]
    assert not np.shares_memory(big, again)
    np.testing.assert_array_equal(again[:, 0], [1, 1, 1, 2, 2, 2])


async def test_consecutive_batches_each_get_their_own_rows() -> None:
    engine = RecordingEngine(delay_s=0.01)
    batcher = await make([engine], max_batch_size=4, max_queue_delay_us=2000)
    try:
        waves = []
        for value in (1.0, 2.0, 3.0):
            waves.append(
                asyncio.gather(*(batcher.infer(rows(1, value + i / 10)) for i in range(3)))
            )
            await asyncio.sleep(0)
        for value, wave in zip((1.0, 2.0, 3.0), waves, strict=True):
            for i, out in enumerate(await wave):
                np.testing.assert_allclose(out["y"], np.full((1, 4), 2 * (value + i / 10)))
        assert max(engine.batches) > 1  # the buffer was reused across batched runs
    finally:
        await batcher.close()
