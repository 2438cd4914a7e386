"""In-process, dict-based :class:`MemoryBackend` for tests and ephemeral sessions.

Same semantics as the SQLite backend (validation, versions, optimistic concurrency,
copy/delete), but nothing survives the process.  Records are kept as immutable
:class:`RawSession` values (JSON texts), so callers can never mutate stored data through a
returned record; one re-entrant lock makes every operation atomic across threads.  ``_append``
re-encodes nothing already stored (it only concatenates tuples of JSON texts).
"""

from __future__ import annotations

import threading
import time

from .store_base import EncodedPayload, RawSession, SessionBackend, conflict, exists, not_found

__all__ = ["MemoryBackend"]


class MemoryBackend(SessionBackend):
    """Sessions in a dict guarded by a lock; for tests and throw-away use."""

    def __init__(self) -> None:
        self._rows: dict[str, RawSession] = {}
        self._lock = threading.RLock()

    def _get(self, session_id: str) -> RawSession | None:
        with self._lock:
            return self._rows.get(session_id)

    def _create(self, session_id: str, metadata: str) -> RawSession:
        with self._lock:
            if session_id in self._rows:
                raise exists(session_id)
            now = time.time()
            row = RawSession(session_id, None, (), metadata, 0, now, now)
            self._rows[session_id] = row
            return row

    def _current(self, session_id: str, expected_version: int) -> RawSession:
        """The stored row, checked against the caller's version (call with the lock held)."""
        old = self._rows.get(session_id)
        if old is None:
            raise not_found(session_id)
        if old.version != expected_version:
            raise conflict(session_id, expected_version, old.version)
        return old

    def _commit(self, session_id: str, payload: EncodedPayload, expected_version: int) -> RawSession:
        with self._lock:
            old = self._current(session_id, expected_version)
            row = RawSession(session_id, payload.state, payload.messages, payload.metadata,
                             old.version + 1, old.created_at, max(time.time(), old.updated_at))
            self._rows[session_id] = row
            return row

    def _append(self, session_id: str, payload: EncodedPayload, expected_version: int,
                base_length: int, created_at: float | None) -> tuple[int, float, float] | None:
        with self._lock:
            old = self._current(session_id, expected_version)
            if len(old.messages) != base_length or (created_at is not None and created_at != old.created_at):
                return None
            row = RawSession(session_id, payload.state, old.messages + payload.messages, payload.metadata,
                             old.version + 1, old.created_at, max(time.time(), old.updated_at))
            self._rows[session_id] = row
            return row.version, row.created_at, row.updated_at

    def _list(self, prefix: str | None) -> list[str]:
        with self._lock:
            ids = list(self._rows)
        return sorted(i for i in ids if prefix is None or i.startswith(prefix))

    def _delete(self, session_id: str) -> bool:
        with self._lock:
            return self._rows.pop(session_id, None) is not None

    def _copy(self, src_id: str, dst_id: str) -> RawSession:
        with self._lock:
            src = self._rows.get(src_id)
            if src is None:
                raise not_found(src_id)
            if dst_id in self._rows:
                raise exists(dst_id)
            now = time.time()
            row = RawSession(dst_id, src.state, src.messages, src.metadata, 0, now, now)
            self._rows[dst_id] = row
            return row
