"""Durable :class:`SQLiteBackend`: sessions in one SQLite file, safe across threads and processes.

Schema (``PRAGMA user_version`` = 1)::

    sessions(id TEXT PRIMARY KEY, state BLOB, metadata TEXT, version INTEGER,
             created_at REAL, updated_at REAL)
    messages(session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE, idx INTEGER, json TEXT,
             PRIMARY KEY (session_id, idx))

Why one row per message rather than the whole log in one JSON column: the log of a long-lived
session is append-mostly.  ``_append`` (the per-turn path, used by ``SessionStore.commit`` when its
cache shows the new log extends the stored one) inserts only the new rows after checking the version
and the stored length (one index lookup), so a turn reads and writes O(new messages) rows whatever
the log's length.  ``_commit`` (a log that is not an extension, or no cached copy) compares the
stored rows with the new log and rewrites only from the first differing index: correct, but it reads
the whole log.  Either way little WAL traffic and secure-delete zeroing, and reads and writes of one
session happen inside one transaction, so the log can never be seen half-updated.

Concurrency: one connection per thread (``threading.local``), WAL journal so readers never block
the writer, ``BEGIN IMMEDIATE`` for every write (the version check and the write happen under the
database write lock, which also serialises writers in *other processes*), and the connection
``timeout`` as busy timeout.  Privacy: ``PRAGMA secure_delete=ON`` zeroes deleted content and
``delete`` truncates the WAL afterwards (best effort), so a forgotten session's bytes do not
linger in the files; :meth:`SQLiteBackend.vacuum` also rebuilds the file.  All SQL is parametrised.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import CorruptSessionError, DeltaMemError, StoreError
from .store_base import EncodedPayload, RawSession, SessionBackend, conflict, exists, not_found

__all__ = ["SQLiteBackend", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    state      BLOB,
    metadata   TEXT NOT NULL DEFAULT '{}',
    version    INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    json       TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
);
"""


class _Connection(sqlite3.Connection):
    """A weak-referenceable connection: closed by GC when its thread ends, or by ``close()``."""


_SELECT_SESSION = "SELECT state, metadata, version, created_at, updated_at FROM sessions WHERE id = ?"
# the stored log's length in one index seek (the primary key index; rows are contiguous from 0)
_SELECT_LOG_LENGTH = "SELECT idx + 1 FROM messages WHERE session_id = ? ORDER BY idx DESC LIMIT 1"
_UPDATE_SESSION = "UPDATE sessions SET state = ?, metadata = ?, version = ?, updated_at = ? WHERE id = ?"
_INSERT_MESSAGE = "INSERT INTO messages (session_id, idx, json) VALUES (?, ?, ?)"


class SQLiteBackend(SessionBackend):
    """Sessions in a SQLite database file (created with its parent directories if missing)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0) -> None:
        if os.fsdecode(path) in ("", ":memory:"):
            raise ValueError("SQLiteBackend needs a file path; use MemoryBackend for an in-memory store")
        self.path = Path(os.fsdecode(path)).expanduser().absolute()  # absolute: never a "file:" URI
        self.timeout = float(timeout)
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {self.path}: {exc}") from exc
        self._init_schema()

    def __repr__(self) -> str:
        return f"SQLiteBackend({str(self.path)!r})"

    # -- connections and transactions -----------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread; it closes when the thread ends)."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        if os.getpid() != self._pid:  # forked child: never reuse the parent's connections
            self._pid, self._local, self._conns = os.getpid(), threading.local(), weakref.WeakSet()
            self._conns_lock = threading.Lock()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                       check_same_thread=False,  # only close() crosses threads
                                       factory=_Connection)
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open session database {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._conns_lock:
                self._conns.add(conn)
        return conn

    @contextmanager
    def _txn(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A transaction (``BEGIN IMMEDIATE`` if ``write``); sqlite errors become StoreError."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except DeltaMemError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"session database {self.path}: {exc}") from exc

    def _init_schema(self) -> None:
        conn = self._conn()
        # switching to WAL needs an exclusive lock and sqlite may report "locked" at once, without its busy
        # handler, while another process opens the same new file: retry until the connection timeout
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot open session database {self.path}: {exc}") from exc
                time.sleep(0.02)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open session database {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            warnings.warn(f"{self.path}: WAL journal mode unavailable (got {mode!r}); "
                          "concurrent readers will block writers", RuntimeWarning, stacklevel=3)
        with self._txn(write=True) as c:
            found = c.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has session schema version {found}; this deltamem-agents "
                                 f"understands up to {SCHEMA_VERSION} (upgrade the package)")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            if found < SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # constant, not user input

    def close(self) -> None:
        """Close every connection this backend opened (from any thread)."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = list(self._conns), weakref.WeakSet()
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # -- maintenance -------------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it; False if readers prevented it."""
        try:
            busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint of {self.path} failed: {exc}") from exc
        return busy == 0

    def vacuum(self) -> None:
        """Rebuild the database file (reclaims space, drops any free pages) and truncate the WAL."""
        try:
            self._conn().execute("VACUUM")
        except sqlite3.Error as exc:
            raise StoreError(f"VACUUM of {self.path} failed: {exc}") from exc
        self.checkpoint()

    # -- primitives ----------------------------------------------------------------------------
    @staticmethod
    def _read(conn: sqlite3.Connection, session_id: str) -> RawSession | None:
        row = conn.execute(_SELECT_SESSION, (session_id,)).fetchone()
        if row is None:
            return None
        rows = conn.execute("SELECT idx, json FROM messages WHERE session_id = ? ORDER BY idx",
                            (session_id,)).fetchall()
        if any(idx != i for i, (idx, _) in enumerate(rows)):
            raise CorruptSessionError(f"session {session_id!r}: message log has gaps or is out of order")
        state, metadata, version, created_at, updated_at = row
        return RawSession(session_id, state, tuple(j for _, j in rows), metadata, version,
                          created_at, updated_at)

    def _get(self, session_id: str) -> RawSession | None:
        with self._txn(write=False) as conn:
            return self._read(conn, session_id)

    def _create(self, session_id: str, metadata: str) -> RawSession:
        now = time.time()
        with self._txn(write=True) as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO sessions (id, state, metadata, version, created_at, updated_at) "
                "VALUES (?, NULL, ?, 0, ?, ?)", (session_id, metadata, now, now))
            if cur.rowcount == 0:
                raise exists(session_id)
        return RawSession(session_id, None, (), metadata, 0, now, now)

    @staticmethod
    def _check_current(conn: sqlite3.Connection, session_id: str, expected_version: int) -> tuple[float, float]:
        """Inside a write transaction: (created_at, updated_at) if the session is at ``expected_version``."""
        row = conn.execute("SELECT version, created_at, updated_at FROM sessions WHERE id = ?",
                           (session_id,)).fetchone()
        if row is None:
            raise not_found(session_id)
        version, created_at, updated_at = row
        if version != expected_version:
            raise conflict(session_id, expected_version, version)
        return created_at, updated_at

    def _commit(self, session_id: str, payload: EncodedPayload, expected_version: int) -> RawSession:
        version = expected_version + 1
        with self._txn(write=True) as conn:
            created_at, updated_at = self._check_current(conn, session_id, expected_version)
            now = max(time.time(), updated_at)
            conn.execute(_UPDATE_SESSION, (payload.state, payload.metadata, version, now, session_id))
            old = [j for (j,) in conn.execute(
                "SELECT json FROM messages WHERE session_id = ? ORDER BY idx", (session_id,))]
            new = payload.messages
            keep = 0  # length of the unchanged prefix: only the tail is rewritten
            while keep < min(len(old), len(new)) and old[keep] == new[keep]:
                keep += 1
            if keep < len(old):
                conn.execute("DELETE FROM messages WHERE session_id = ? AND idx >= ?", (session_id, keep))
            conn.executemany(_INSERT_MESSAGE, ((session_id, i, new[i]) for i in range(keep, len(new))))
        return RawSession(session_id, payload.state, new, payload.metadata, version, created_at, now)

    def _append(self, session_id: str, payload: EncodedPayload, expected_version: int,
                base_length: int, created_at: float | None) -> tuple[int, float, float] | None:
        """Insert only the new rows: reads one session row and one index entry, whatever the log's length."""
        with self._txn(write=True) as conn:
            stored_created_at, updated_at = self._check_current(conn, session_id, expected_version)
            last = conn.execute(_SELECT_LOG_LENGTH, (session_id,)).fetchone()
            stored_length = last[0] if last else 0
            if stored_length != base_length or (created_at is not None and created_at != stored_created_at):
                return None  # the stored log is not the one the caller extends: nothing written
            now = max(time.time(), updated_at)
            conn.execute(_UPDATE_SESSION, (payload.state, payload.metadata, expected_version + 1, now, session_id))
            conn.executemany(_INSERT_MESSAGE, ((session_id, base_length + i, text)
                                               for i, text in enumerate(payload.messages)))
        return expected_version + 1, stored_created_at, now

    def _list(self, prefix: str | None) -> list[str]:
        with self._txn(write=False) as conn:
            if prefix is None:
                rows = conn.execute("SELECT id FROM sessions ORDER BY id").fetchall()
            else:  # substr, not LIKE: LIKE is case-insensitive and treats % and _ as wildcards
                rows = conn.execute("SELECT id FROM sessions WHERE substr(id, 1, ?) = ? ORDER BY id",
                                    (len(prefix), prefix)).fetchall()
        return [r[0] for r in rows]

    def _delete(self, session_id: str) -> bool:
        with self._txn(write=True) as conn:
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            found = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0
        if found:  # push the zeroed pages into the main file and drop old WAL frames (best effort)
            try:
                self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
        return found

    def _copy(self, src_id: str, dst_id: str) -> RawSession:
        now = time.time()
        with self._txn(write=True) as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (src_id,)).fetchone() is None:
                raise not_found(src_id)
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (dst_id,)).fetchone() is not None:
                raise exists(dst_id)
            conn.execute("INSERT INTO sessions (id, state, metadata, version, created_at, updated_at) "
                         "SELECT ?, state, metadata, 0, ?, ? FROM sessions WHERE id = ?",
                         (dst_id, now, now, src_id))
            conn.execute("INSERT INTO messages (session_id, idx, json) "
                         "SELECT ?, idx, json FROM messages WHERE session_id = ?", (dst_id, src_id))
            raw = self._read(conn, dst_id)
        assert raw is not None
        return raw
