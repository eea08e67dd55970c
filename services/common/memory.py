"""Keeping a long-running server's memory from ratcheting under load (glibc malloc).

Three allocator behaviours made RSS climb under load and never come back:

- Arenas. glibc gives threads that allocate concurrently their own malloc
  arena (up to 8 per core). Every executor thread here (image decode,
  preprocessing, engine workers, ONNX Runtime's pools) allocates image-sized
  buffers, so each grows an arena to its own peak, and memory freed in one
  arena is neither reused by another thread nor, mostly, returned to the OS.
- The dynamic mmap threshold. Buffers above the threshold are mmapped and
  unmapped on free, but freeing one raises the threshold to its size (up to
  32 MiB), so after the first large image every later image-sized buffer
  comes from the arenas instead and stays there.

- ONNX Runtime's CPU arena grows to the largest batch and input shape a
  model has seen and keeps it; with variable shapes (OCR) it fragments and
  keeps growing. Each ONNX Runtime engine of such a model shrinks it every
  ``engine.arena_shrink_period_s`` (one run hands the unused regions back);
  a fixed-shape model keeps its arena, bounded by its largest batch.

Measured on the OCR service alone (8 callers, 24 sizes of a photo, 75 s,
2 busy cores): RSS 192 -> 1,673 MiB and 1,584 MiB after the load without
these settings; 620 MiB after the load with them (peaks while large images
are in flight are the working set, not a ratchet).

``tune_allocator`` (called at process start, before any worker thread exists)
caps the arenas at ``arena_max`` and fixes the mmap threshold, so buffers of
large images always go back to the OS when freed, and the trim threshold, so the
heap buffers of ordinary images are reused by the next request instead of being
handed back and faulted in again at every call; ``trim_when_quiet`` calls
``malloc_trim(0)`` once a burst of load is over, to return what the arenas hold
free (not under load: there it cost far more than it returned). Settings
given through glibc's own environment variables (``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) win;
``VISIONMESH_MALLOC_TUNING=off`` leaves the allocator alone (for measuring the
difference). Other C libraries: no-op.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from services.common import libc as c_library

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

DEFAULT_ARENA_MAX = 2
# Anything this size or larger (a 1280x1024 RGB image) is mmapped and unmapped on free.
# Fixed, so it never climbs to 32 MiB; high enough that the buffers of an ordinary photo
# (its pixels, a model's float input) are reused from the heap: every mmapped buffer is
# zero-filled page by page when first touched, and a threshold of 256 KiB cost the
# classify service 3 ms of CPU per image (7 %) in those page faults.
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
# Free memory at the top of an arena is handed back at ``free`` only past this much. Fixing
# the mmap threshold also fixes this one at glibc's 128 KiB, so every freed image-sized heap
# buffer went back to the OS at once and the next request's buffer was faulted in again
# (about 800 page faults, 1.8 ms of CPU per image in the face service). The periodic
# ``malloc_trim`` still returns what stays free.
DEFAULT_TRIM_THRESHOLD = 64 * 1024 * 1024
DEFAULT_TRIM_PERIOD_S = 10.0
# A process that used less than this share of one core over a trim period is quiet: an idle
# service's health checks, probes and timers stay well below it.
QUIET_CPU_SHARE = 0.05


def _libc() -> ctypes.CDLL | None:
    if os.environ.get("VISIONMESH_MALLOC_TUNING", "").lower() in ("off", "0", "false"):
        return None
    libc = c_library.load()
    if libc is None:
        return None
    try:
        libc.mallopt  # noqa: B018 - glibc only: musl and others have no mallopt
        libc.malloc_trim  # noqa: B018
    except AttributeError:
        return None
    return libc


def tune_allocator(
    arena_max: int = DEFAULT_ARENA_MAX,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
) -> bool:
    """Cap malloc arenas, fix the mmap and trim thresholds; True when glibc took the settings."""
    libc = _libc()
    if libc is None:
        return False
    ok = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok &= bool(libc.mallopt(_M_ARENA_MAX, arena_max))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok &= bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        ok &= bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return ok


def trim() -> None:
    """Return free memory at the top of and inside every malloc arena to the OS."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


async def trim_when_quiet(
    period_s: float = DEFAULT_TRIM_PERIOD_S,
    quiet_share: float = QUIET_CPU_SHARE,
    cpu_s: Callable[[], float] = time.process_time,
) -> None:
    """Every ``period_s`` seconds, ``trim()`` once the process has been quiet for a whole
    period (it used less than ``quiet_share`` of one core), and then not again until it has
    been busy; until cancelled. ``cpu_s`` reads the process's CPU seconds so far.

    Under load a trim costs far more than its own few ms: the classify service at
    saturation ran 5-11 % fewer images per second with a trim every 10 s than with none
    (docs/triton.md), and the memory it hands back is the working set the next batches
    need again. So memory is handed back when a burst is over, not in the middle of one.
    """
    if _libc() is None:
        return
    trimmed = False
    last = cpu_s()
    while True:
        await asyncio.sleep(period_s)
        now = cpu_s()
        quiet = now - last < quiet_share * period_s
        if not quiet:
            trimmed = False
        elif not trimmed:
            await asyncio.to_thread(trim)
            trimmed = True
            now = cpu_s()  # the trim's own CPU is not load
        last = now


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of ``pid`` (default: this process) in MiB, from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")
