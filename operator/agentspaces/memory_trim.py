"""Hands the C heap's free pages back to the system every so often.

A burst of reconciles grows glibc's heap; when it is over most of those pages are free,
but free() returns only what lies at the top of an arena, so the operator's RSS stays
at the burst's peak for as long as it runs. glibc's malloc_trim(0) releases every whole
free page, wherever it lies (docs/scale.md has the figures). Other C libraries (musl,
macOS) have no such call, and the operator then does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable


def malloc_trim() -> Callable[[], bool] | None:
    """The process's glibc malloc_trim(0), or None where the C library has none.
    The call answers whether any memory went back to the system."""
    try:
        found = ctypes.CDLL(None).malloc_trim  # the C library the process already uses
    except (OSError, AttributeError):
        return None
    found.argtypes = [ctypes.c_size_t]
    found.restype = ctypes.c_int
    return lambda: bool(found(0))


async def trim_every(interval: float, trim: Callable[[], bool]) -> None:
    """Trim every `interval` seconds until cancelled. The call runs on the event loop:
    it takes milliseconds, and the worker threads are what a busy operator lacks."""
    while True:
        await asyncio.sleep(interval)
        trim()
