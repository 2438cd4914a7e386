"""Streaming helpers shared by the chat model and its framework adapters (pure Python, no torch).

- :class:`StreamHoldback`: turns the decoder's raw text deltas into deltas a caller may show. It holds back
  a tail that may still change meaning -- a prefix of a stop sequence (the decoder cuts it later) and, with
  tools bound, a possible ``<tool_call>`` opening and the whitespace before it (the logged reply drops both)
  -- so what was shown is always a prefix of the reply the session logs.
- :func:`aiter_in_thread`: an async iterator over a blocking iterator that runs, whole, in one worker
  thread. One thread for the whole stream because a session's turn lock is re-entrant per thread and must
  be released by the thread that took it; the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import AsyncIterator, Callable, Iterable, Iterator, Sequence, TypeVar

from ..runtime.tools import TOOL_CALL_OPEN

__all__ = ["StreamHoldback", "aiter_in_thread", "TOOL_CALL_OPEN"]

T = TypeVar("T")


class StreamHoldback:
    """Stream-safe text: ``push(delta)`` returns what may be shown now, ``rest(final)`` what is left of the
    final reply afterwards (empty if the shown text is not a prefix of it).

    ``stops``: stop sequences (a tail that may become one is held back); ``tools``: hold back a possible
    ``<tool_call>`` and the whitespace before it, and show nothing once a call has started."""

    def __init__(self, stops: Sequence[str] = (), tools: bool = False) -> None:
        self.text = ""
        self.emitted = ""
        self.stops = [s for s in stops if s]
        self.tools = tools
        self.closed = False  # a <tool_call> started: nothing more is content

    def _safe_len(self) -> int:
        t = self.text
        n = len(t)
        if self.tools:
            i = t.find(TOOL_CALL_OPEN)
            if i >= 0:
                self.closed = True
                n = i
            else:
                for k in range(min(len(TOOL_CALL_OPEN) - 1, len(t)), 0, -1):
                    if TOOL_CALL_OPEN.startswith(t[len(t) - k:]):
                        n = len(t) - k
                        break
            n = len(t[:n].rstrip())
        for s in self.stops:
            for k in range(min(len(s) - 1, n), 0, -1):
                if s.startswith(t[n - k:n]):
                    n -= k
                    break
        return n

    def push(self, delta: str) -> str:
        """Add a raw delta; return the text that became safe to show (possibly empty)."""
        if self.closed:
            return ""
        self.text += delta
        n = self._safe_len()
        if n <= len(self.emitted):
            return ""
        out = self.text[len(self.emitted):n]
        self.emitted = self.text[:n]
        return out

    def rest(self, final: str) -> str:
        """What of the final reply has not been shown yet."""
        return final[len(self.emitted):] if final.startswith(self.emitted) else ""


async def aiter_in_thread(make: Callable[[], Iterable[T]]) -> AsyncIterator[T]:
    """Yield, on the event loop, the items of ``make()`` iterated in one worker thread.

    ``make`` is called in the worker, inside a copy of the caller's context variables. Errors are re-raised
    in the consumer. If the consumer stops early, the iterator is closed (a generator's ``finally`` runs,
    e.g. a turn rolls back) in the worker thread when it next produces an item."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: tuple[int, object]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            cancelled.set()

    def produce() -> None:
        it: Iterator[T] | None = None
        try:
            it = iter(make())
            for x in it:
                if cancelled.is_set():
                    break
                put((0, x))
            put((1, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((2, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = loop.run_in_executor(None, contextvars.copy_context().run, produce)
    try:
        while True:
            kind, value = await queue.get()
            if kind == 0:
                yield value  # type: ignore[misc]
            elif kind == 1:
                await worker
                return
            else:
                await worker
                raise value  # type: ignore[misc]
    finally:
        cancelled.set()
