"""Overload is shed as fast RESOURCE_EXHAUSTED, never as deadline misses: a concurrency ramp
against the whole mesh (every service and the gateway as separate processes, loopback).

Before admission control, 32 concurrent callers lost 85 % of their answers'
features to DEADLINE_EXCEEDED and the breakers then reported the busy services
UNAVAILABLE. The default run is a short ramp (1, 8, 64 callers, a few seconds
each); the slow variant runs the full 1 -> 512 ramp and holds goodput at its top
to 90 % of its best (bench/bench_overload.py prints the same table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.bench_overload import LevelStats, photo, ramp, row
from visionmesh.mesh import LocalMesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    data_dir = tmp_path_factory.mktemp("hash-data")
    mesh = LocalMesh(
        log_dir=tmp_path_factory.mktemp("logs"),
        extra_args={"hash": ["--set", f"storage.data_dir={data_dir}"]},
    )
    try:
        mesh.start()
        assert not mesh.failed, mesh.failed
        yield mesh
    finally:
        mesh.stop()


def _check(results: list[LevelStats], deadline_s: float) -> None:
    for stats in results:
        print(row(stats))
    for stats in results:
        assert stats.calls > 0
        assert stats.deadline_misses == 0, f"calls past their deadline at {stats.level}"
        assert not stats.other, (
            f"errors other than RESOURCE_EXHAUSTED at {stats.level}: {stats.other}"
        )
        # Features that still ran out of time: a few, not the shape of the overload.
        assert stats.feature_deadline <= max(2, 0.05 * stats.calls), stats
        assert stats.max_ms < deadline_s * 1000
        # Refusals are fast: they cost no queueing.
        assert stats.refusal_p99_ms < 1000, stats.refusal_p99_ms
    top = results[-1]
    assert top.refused + top.partly_refused > 0, "the top level must be past capacity and shed"
    assert top.full > 0, "shedding must leave room for full answers"


async def test_short_ramp_sheds_overload_as_resource_exhausted(mesh: LocalMesh) -> None:
    deadline_s = 4.0
    results = await ramp(mesh.gateway_address, [1, 8, 64], 6.0, deadline_s, photo())
    _check(results, deadline_s)
    best = max(s.goodput for s in results)
    assert results[-1].goodput >= 0.5 * best, [s.goodput for s in results]


@pytest.mark.slow
async def test_full_ramp_keeps_goodput_at_the_top(mesh: LocalMesh) -> None:
    deadline_s = 5.0
    levels = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    results = await ramp(mesh.gateway_address, levels, 15.0, deadline_s, photo())
    _check(results, deadline_s)
    best = max(s.goodput for s in results)
    assert results[-1].goodput >= 0.9 * best, [s.goodput for s in results]


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(ramp("127.0.0.1:50050", [1, 8, 64], 6.0, 4.0, photo()))
