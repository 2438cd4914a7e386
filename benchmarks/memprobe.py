"""Process-memory probes for the soak: RSS split, glibc heap counters, malloc_trim, tracemalloc diffs.

- `rss_split()`: VmRSS / RssAnon / RssFile from /proc/self/status, in MiB.
- `heap_stats()`: glibc `mallinfo2()` summed over all arenas, in MiB: `heap_in_use` (uordblks, live malloc
  chunks, including torch tensors and Rust buffers below the mmap threshold), `heap_free` (fordblks, freed but
  still held by the allocator), `mmapped` (hblkhd, chunks served by mmap, returned to the OS on free),
  `arena` (sbrk'd main-arena bytes plus other arenas' heaps). RSS that grows while `heap_in_use + mmapped`
  stays flat is allocator retention (fragmentation / arenas), not a leak.
- `malloc_trim()`: glibc `malloc_trim(0)` (returns free pages of every arena to the OS).
- `TraceDiff`: tracemalloc snapshots at chosen turns and a text report of the top growth by traceback.

Only glibc (Linux) is supported for the heap functions; elsewhere they return {} / False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import tracemalloc
from pathlib import Path

MiB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def rss_split() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def heap_stats() -> dict[str, float]:
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return {}
    _LIBC.mallinfo2.restype = _MallInfo2
    m = _LIBC.mallinfo2()
    return {"heap_in_use": m.uordblks / MiB, "heap_free": m.fordblks / MiB, "mmapped": m.hblkhd / MiB,
            "arena": m.arena / MiB, "arenas": arena_count()}


def arena_count() -> int:
    """Number of glibc malloc arenas (`<heap nr=...>` entries of malloc_info); -1 if unavailable."""
    if _LIBC is None or not hasattr(_LIBC, "malloc_info"):
        return -1
    import re
    import tempfile

    _LIBC.fopen.restype = ctypes.c_void_p
    _LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    _LIBC.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        f = _LIBC.fopen(tmp.name.encode(), b"w")
        if not f:
            return -1
        _LIBC.malloc_info(0, f)
        _LIBC.fclose(f)
        return len(re.findall(r"<heap nr=", Path(tmp.name).read_text()))


def malloc_trim() -> bool:
    """glibc malloc_trim(0); True if memory was returned to the OS."""
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim"):
        return False
    return bool(_LIBC.malloc_trim(0))


def object_counts() -> dict[str, int]:
    """Live gc-tracked objects, and torch tensors among them (slow: use at snapshot turns only)."""
    import warnings

    import torch

    objs = gc.get_objects()
    with warnings.catch_warnings():  # isinstance on some torch.distributed objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in objs if isinstance(o, torch.Tensor)]
    return {"gc_objects": len(objs), "tensors": len(tensors),
            "tensor_mib": round(sum(t.untyped_storage().nbytes() for t in tensors) / MiB, 2)}


class TraceDiff:
    """tracemalloc snapshots at `turns`; `report()` diffs each later snapshot against the first."""

    def __init__(self, turns: list[int], frames: int = 12) -> None:
        self.turns = sorted(turns)
        self.snaps: dict[int, tracemalloc.Snapshot] = {}
        self.counts: dict[int, dict[str, int]] = {}
        tracemalloc.start(frames)

    def maybe_snapshot(self, turn: int) -> bool:
        if turn not in self.turns:
            return False
        gc.collect()
        self.snaps[turn] = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__),
             tracemalloc.Filter(False, linecache.__file__)])  # the report's own source-line cache
        self.counts[turn] = {"traced_mib": round(tracemalloc.get_traced_memory()[0] / MiB, 2), **object_counts()}
        return True

    def report(self, top: int = 25) -> str:
        done = sorted(self.snaps)
        if len(done) < 2:
            return "tracemalloc: fewer than two snapshots taken\n"
        lines = [f"turn {t}: {self.counts[t]}" for t in done]
        a = done[0]
        for b in done[1:]:
            stats = self.snaps[b].compare_to(self.snaps[a], "traceback")
            total = sum(s.size_diff for s in stats)
            lines.append(f"\n=== turn {a} -> {b}: traced Python memory {total / MiB:+.2f} MiB; top {top} by growth")
            for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
                lines.append(f"{s.size_diff / 1024:+10.1f} KiB {s.count_diff:+8d} blocks")
                lines.extend("      " + ln for ln in s.traceback.format(limit=6, most_recent_first=True))
            by_file = self.snaps[b].compare_to(self.snaps[a], "filename")
            lines.append(f"--- turn {a} -> {b} by file (top {top})")
            for s in by_file[:top]:
                lines.append(f"{s.size_diff / 1024:+10.1f} KiB {s.count_diff:+8d} blocks  {s.traceback[0].filename}")
        return "\n".join(lines) + "\n"
