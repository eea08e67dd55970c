"""What the service processes and the GPU were doing during a load window."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tools.gpu_check.processes import cpu_seconds


def _gpu_utilisation() -> float | None:
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    try:
        return float(done.stdout.split()[0])
    except (IndexError, ValueError):
        return None


@contextmanager
def sampled(pids: dict[str, int], gpu: bool, into: dict[str, Any]) -> Iterator[None]:
    """Fill ``into`` with CPU cores used per process and GPU utilisation (nvidia-smi, 1 s
    samples)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    samples: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            value = _gpu_utilisation()
            if value is not None:
                samples.append(value)

    poller = threading.Thread(target=poll, daemon=True)
    if gpu and shutil.which("nvidia-smi"):
        poller.start()
    try:
        yield
    finally:
        stop.set()
        if poller.is_alive():
            poller.join(6.0)
        wall = time.perf_counter() - start
        for name, pid in pids.items():
            into[f"{name} CPU cores used"] = round((cpu_seconds(pid) - before[name]) / wall, 2)
        if samples:
            into["GPU util % mean"] = round(sum(samples) / len(samples), 1)
            into["GPU util % max"] = max(samples)
