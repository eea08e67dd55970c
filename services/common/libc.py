"""The C library, loaded once per process (Linux; elsewhere ``None``), and what is done with it
beyond the allocator (``memory.py``): naming threads for the OS.

``ctypes.util.find_library`` runs ``ldconfig -p`` in a subprocess on every call
(1-5 ms of CPU here): every malloc trim paid that before the library was kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def load() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (its first 15 bytes) where the OS shows it: ``top -H``,
    ``ps -L``, py-spy, /proc/<pid>/task/<tid>/comm. Python names its threads for itself only.
    Linux; elsewhere nothing."""
    libc = load()
    if libc is not None:
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
