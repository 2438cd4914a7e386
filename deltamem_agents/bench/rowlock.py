"""One writer per results file.

The bench and the probes resume by skipping rows already in their JSONL file. Two runs started on the same file
(the same command twice, or a resume while the first run still goes) would both compute the same to-do list and
write every row twice — silently, since each row is valid on its own. `exclusive_rows` takes an advisory lock on
a sibling `<file>.lock` before the file is read and holds it until writing ends; a second run fails at once with a
clear error and writes nothing. The lock dies with its process (flock), so a killed run never leaves it stuck.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunBusyError


@contextmanager
def exclusive_rows(path: Path) -> Iterator[None]:
    """Hold the only writer's lock on results file `path` (POSIX flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, as before
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"another run is writing {path}; wait for it to finish (or stop it), then resume "
                               "with the same command") from None
        yield  # closing the file releases the lock
