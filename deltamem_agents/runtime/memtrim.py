"""Hand freed heap memory back to the OS after the window's KV cache is rebuilt (glibc only).

Why (docs/soak.md, "RSS growth: diagnosis"): on glibc, the KV cache grows by reallocation every turn, and its
buffers come from the main heap once glibc's dynamic mmap threshold has risen. Freed chunks stay resident, so
RSS climbs in steps (+90 MiB over 1,000 soak turns) while the live heap stays flat. `malloc_trim(0)` returns
those free pages; the session runtime calls it after each eviction's KV rebuild (about every 20 turns in
the soak, on a turn that already costs seconds). Set `DELTAMEM_MALLOC_TRIM=0` to turn it off. A no-op off
glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

_TRIM: Any = None  # resolved on first use: the libc function, or False when unavailable


def _malloc_trim() -> Any:
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _TRIM = fn
        except (OSError, AttributeError):
            pass
    return _TRIM


def enabled() -> bool:
    return os.environ.get("DELTAMEM_MALLOC_TRIM", "1") != "0" and bool(_malloc_trim())


def release_free_memory() -> bool:
    """glibc `malloc_trim(0)` unless disabled; True if it ran and gave memory back."""
    if not enabled():
        return False
    return bool(_malloc_trim()(0))
