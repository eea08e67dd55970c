"""Memory settings: glibc malloc tuning and trims, and ONNX Runtime's periodic arena shrink."""

from __future__ import annotations

import asyncio
import ctypes.util
import os
import subprocess
import sys

import numpy as np
import pytest

from services.common import memory
from services.common.config import EngineConfig
from services.common.engines import create_engine
from services.common.repository import load_entry
from tests.support import random_inputs


def test_allocator_settings_take_and_trim_returns_freed_memory() -> None:
    """In a fresh process: after freeing 256 small buffers' worth, a trim gives the pages back."""
    code = """
import numpy as np
from services.common import memory
assert memory.tune_allocator(), "glibc did not take the settings"
blocks = [bytearray(100_000) for _ in range(2000)]  # below the mmap threshold: heap memory
for b in blocks:
    b[::4096] = b"x" * len(b[::4096])
peak = memory.rss_mb()
del blocks
memory.trim()
print(peak, memory.rss_mb())
"""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("MALLOC_ARENA_MAX", None)
    env.pop("VISIONMESH_MALLOC_TUNING", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    peak, after = map(float, out.stdout.split())
    assert peak - after > 150, (peak, after)  # ~190 MiB touched, handed back


def test_trims_do_not_look_the_c_library_up_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``find_library`` forks ``ldconfig``: a periodic trim must not pay that every time."""
    lookups = []
    real = ctypes.util.find_library
    monkeypatch.setattr(
        ctypes.util, "find_library", lambda name: lookups.append(name) or real(name)
    )
    for _ in range(3):
        memory.trim()
    assert len(lookups) <= 1, lookups  # the first, unless an earlier test loaded it


class _Periods:
    """A process's CPU clock that advances by a scripted period at each reading, and a trim that
    costs CPU (which must not count as load)."""

    def __init__(self, periods: list[str]) -> None:
        self.periods, self.log = periods, []
        self.cpu, self.started, self.trimmed = 0.0, False, False

    def cpu_s(self) -> float:
        if not self.started or self.trimmed:  # the first reading, or the one right after a trim
            self.started, self.trimmed = True, False
            return self.cpu
        if not self.periods:
            raise asyncio.CancelledError  # the script is over
        period = self.periods.pop(0)
        self.log.append(period)
        self.cpu += 1.0 if period == "busy" else 0.0
        return self.cpu

    def trim(self) -> None:
        self.log.append("trim")
        self.cpu += 5.0
        self.trimmed = True


def test_trims_once_a_burst_of_load_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not under load (a trim there costs more than it returns), once when quiet, again only
    after the next busy spell."""
    clock = _Periods(["busy", "quiet", "quiet", "quiet", "busy", "busy", "quiet", "quiet"])
    monkeypatch.setattr(memory, "_libc", lambda: object())
    monkeypatch.setattr(memory, "trim", clock.trim)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(memory.trim_when_quiet(period_s=0.001, quiet_share=0.5, cpu_s=clock.cpu_s))
    assert clock.log == [
        "busy", "quiet", "trim", "quiet", "quiet", "busy", "busy", "quiet", "trim", "quiet",
    ]  # fmt: skip


def test_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_MALLOC_TUNING", "off")
    assert not memory.tune_allocator()


def test_onnxruntime_engine_shrinks_its_arena_and_answers_the_same() -> None:
    entry = load_entry("ppocr_det")  # input height and width vary
    plain = create_engine(entry, EngineConfig(threads=1, arena_shrink_period_s=0))
    shrinking = create_engine(entry, EngineConfig(threads=1, arena_shrink_period_s=1e-9))
    try:
        inputs = random_inputs(plain, 1)
        expected = plain.infer(inputs)
        for _ in range(3):  # every run shrinks
            got = shrinking.infer(inputs)
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
        assert shrinking._run_options() is not None and plain._run_options() is None  # type: ignore[attr-defined]
    finally:
        plain.close()
        shrinking.close()


def test_a_fixed_shape_model_keeps_its_arena() -> None:
    # Its arena stops growing at the largest batch; shrinking would only re-fault it.
    engine = create_engine(
        load_entry("efficientnet_lite0"), EngineConfig(threads=1, arena_shrink_period_s=1e-9)
    )
    try:
        engine.infer(random_inputs(engine, 1))
        assert engine._run_options() is None  # type: ignore[attr-defined]
    finally:
        engine.close()
