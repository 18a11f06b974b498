"""Give freed heap memory back to the operating system while weights load (glibc only).

Loading replaces every variable's buffer one tensor at a time. glibc keeps the freed old
buffers in its heaps (another thread's arena, or under its raised mmap threshold), so
without help the process grows by up to the model's whole weight size while loading: on
JAX a B0-S load peaked at 1.2x the weights above the built model (measured, see
``tests/test_weights_load.py``). ``malloc_trim(0)`` hands the free pages back (about 2 ms a call);
called every :func:`release_interval` bytes (1/64 of the load, 1 to 16 MiB) it bounds that
growth to a few percent. Elsewhere (macOS, Windows, musl) this is a no-op.

Example:
    >>> from keras_effv2.weights.memory import release_freed_memory
    >>> release_freed_memory()  # True where glibc's malloc_trim ran
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_MIN_INTERVAL, _MAX_INTERVAL = 1 << 20, 16 << 20


def release_interval(total_bytes: int) -> int:
    """Bytes to load between two releases: 1/64 of ``total_bytes``, within 1-16 MiB."""
    return max(_MIN_INTERVAL, min(_MAX_INTERVAL, total_bytes // 64))


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> bool:
    """``malloc_trim(0)`` where glibc provides it; returns whether it ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
