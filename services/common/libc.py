"""The C library, loaded once per process (Linux with glibc; elsewhere ``None``).

``ctypes.util.find_library`` runs ``ldconfig -p`` in a subprocess on every call
(1-5 ms of CPU here): the periodic malloc trim paid that every 10 s in every
service before the library was kept.
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
