"""Shared :class:`PostgresBackend`: sessions in a Postgres database, safe across threads, processes and hosts.

Schema (in its own Postgres schema, ``deltamem`` by default; ``schema_info.version`` = 1)::

    sessions(id TEXT COLLATE "C" PRIMARY KEY, state BYTEA, metadata TEXT, version BIGINT,
             created_at DOUBLE PRECISION, updated_at DOUBLE PRECISION)
    messages(session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE, idx INTEGER, json TEXT,
             PRIMARY KEY (session_id, idx))

The same layout and contract as :class:`~deltamem_agents.runtime.store_sqlite.SQLiteBackend`: one row per
message, so ``_append`` (the per-turn path) inserts only the new rows after checking the version and the
stored length; ``_commit`` rewrites the log from its first differing message.  Messages and metadata are
stored as the exact JSON texts the base class encoded (TEXT, not JSONB, which would reorder keys), and ids
sort in the "C" collation, i.e. like Python's ``sorted``.

Concurrency: every write is one transaction that first takes the session row's lock (``SELECT ... FOR
UPDATE``), so the version check and the write are atomic against writers in any process; a stale
``expected_version`` raises ConcurrentWriteError and writes nothing.  A read is one statement (one
snapshot), so it never sees a half-committed turn.  :meth:`PostgresBackend.session_lock` is a
per-session lock that holds across processes: a session-level advisory lock keyed by a 64-bit hash of
the schema and session id, held on a connection of its own (a crashed holder's lock goes with its
connection).  Two ids whose hashes collide share a lock (they wait for each other; never incorrect).

Connections: a small pool per backend (at most ``pool_size`` at once for reads and writes, made on first
use, reused, dropped when broken); lock connections are pooled separately so a lock holder can always
get a connection to commit.  A forked child never reuses its parent's connections.

Privacy: ``delete`` removes the session's rows in one transaction; Postgres keeps the dead tuples until
VACUUM reclaims them (autovacuum does, eventually), :meth:`PostgresBackend.vacuum` does it now.  All SQL is
parametrised; the schema name is validated and quoted as an identifier.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import CorruptSessionError, DeltaMemError, SessionBusyError, StoreError
from .store_base import EncodedPayload, RawSession, SessionBackend, conflict, exists, not_found

__all__ = ["PostgresBackend", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_SCHEMA_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# a constant key for the transaction-level advisory lock that serialises schema creation
_SCHEMA_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"deltamem-agents schema", digest_size=8).digest(),
                                  "big", signed=True)

_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.schema_info (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.sessions (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    state      BYTEA,
    metadata   TEXT NOT NULL DEFAULT '{{}}',
    version    BIGINT NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.messages (
    session_id TEXT COLLATE "C" NOT NULL REFERENCES {schema}.sessions(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    json       TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
)
"""

_SQL = {
    # one statement, so one snapshot: the row and the log always come from the same commit
    "read": "SELECT s.state, s.metadata, s.version, s.created_at, s.updated_at, "
            "ARRAY(SELECT m.idx FROM {schema}.messages m WHERE m.session_id = s.id ORDER BY m.idx), "
            "ARRAY(SELECT m.json FROM {schema}.messages m WHERE m.session_id = s.id ORDER BY m.idx) "
            "FROM {schema}.sessions s WHERE s.id = %s",
    "create": "INSERT INTO {schema}.sessions (id, state, metadata, version, created_at, updated_at) "
              "VALUES (%s, NULL, %s, 0, %s, %s) ON CONFLICT (id) DO NOTHING",
    "stamp": "SELECT version, created_at FROM {schema}.sessions WHERE id = %s",
    "lock_row": "SELECT version, created_at, updated_at FROM {schema}.sessions WHERE id = %s FOR UPDATE",
    # the stored log's length in one index seek (rows are contiguous from 0)
    "log_length": "SELECT idx + 1 FROM {schema}.messages WHERE session_id = %s ORDER BY idx DESC LIMIT 1",
    "log": "SELECT json FROM {schema}.messages WHERE session_id = %s ORDER BY idx",
    "update": "UPDATE {schema}.sessions SET state = %s, metadata = %s, version = %s, updated_at = %s "
              "WHERE id = %s",
    "truncate_log": "DELETE FROM {schema}.messages WHERE session_id = %s AND idx >= %s",
    "insert_log": "INSERT INTO {schema}.messages (session_id, idx, json) "
                  "SELECT %s, i, j FROM unnest(%s::integer[], %s::text[]) AS t(i, j)",
    "list": "SELECT id FROM {schema}.sessions ORDER BY id",
    "list_prefix": "SELECT id FROM {schema}.sessions WHERE starts_with(id, %s) ORDER BY id",
    "delete": "DELETE FROM {schema}.sessions WHERE id = %s",
    "share_row": "SELECT 1 FROM {schema}.sessions WHERE id = %s FOR SHARE",
    "copy_row": "INSERT INTO {schema}.sessions (id, state, metadata, version, created_at, updated_at) "
                "SELECT %s, state, metadata, 0, %s, %s FROM {schema}.sessions WHERE id = %s "
                "ON CONFLICT (id) DO NOTHING",
    "copy_log": "INSERT INTO {schema}.messages (session_id, idx, json) "
                "SELECT %s, idx, json FROM {schema}.messages WHERE session_id = %s",
    "create_schema": "CREATE SCHEMA IF NOT EXISTS {schema}",
    "schema_version": "SELECT version FROM {schema}.schema_info",
    "set_schema_version": "INSERT INTO {schema}.schema_info (version) VALUES (%s) "
                          "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
    "vacuum": "VACUUM {schema}.messages, {schema}.sessions",
}


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a declared dependency
        raise StoreError("the Postgres session store needs psycopg 3: pip install 'psycopg[binary]'") from exc
    return psycopg


class _Pool:
    """Reusable autocommit connections: at most ``max_size`` lent out at once (None: no limit)."""

    def __init__(self, connect: Any, max_size: int | None, timeout: float) -> None:
        self._connect, self.timeout = connect, timeout
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size) if max_size else None
        self.closed = False
        from psycopg.pq import TransactionStatus

        self._idle_status = TransactionStatus.IDLE

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if self._slots is not None and not self._slots.acquire(timeout=self.timeout):
            raise StoreError(f"no free Postgres connection within {self.timeout} s (raise pool_size)")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _give_back(self, conn: Any) -> None:
        reusable = not conn.closed and not conn.broken and not self.closed
        if reusable and conn.info.transaction_status != self._idle_status:
            try:
                conn.rollback()
            except Exception:
                reusable = False
        if reusable:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _lock_key(schema: str, session_id: str) -> int:
    """The advisory-lock key of one session: a signed 64-bit hash of schema and id."""
    digest = hashlib.blake2b(f"{schema}\0{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresBackend(SessionBackend):
    """Sessions in a Postgres database (``conninfo``: a ``postgresql://`` URL or a libpq key=value string).

    ``schema``: the Postgres schema holding the tables (created with them on first use);
    ``pool_size``: connections used at once for reads and writes; ``timeout``: seconds to connect or to
    wait for a free connection.
    """

    shared = True  # several processes (servers) may use one database at once

    def __init__(self, conninfo: str, *, schema: str = "deltamem", pool_size: int = 8,
                 timeout: float = 30.0) -> None:
        if not isinstance(schema, str) or _SCHEMA_NAME_RE.fullmatch(schema) is None:
            raise ValueError(f"schema must be a lower-case SQL identifier (letters, digits, _), got {schema!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._pg = _psycopg()
        from psycopg import sql

        self.conninfo, self.schema, self.pool_size, self.timeout = str(conninfo), schema, pool_size, float(timeout)
        name = sql.Identifier(schema)
        self._sql = {k: sql.SQL(v).format(schema=name) for k, v in _SQL.items()}
        self._ddl = [sql.SQL(s).format(schema=name) for s in _DDL.split(";") if s.strip()]
        self._closed = False
        self._new_pools()
        self._init_schema()

    def __repr__(self) -> str:
        return f"PostgresBackend({self._safe_conninfo()!r}, schema={self.schema!r})"

    def _safe_conninfo(self) -> str:
        """The connection string without its password (for messages)."""
        text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", self.conninfo)
        return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)

    # -- connections and transactions -----------------------------------------------------
    def _connect(self) -> Any:
        try:
            return self._pg.connect(self.conninfo, autocommit=True, connect_timeout=max(1, int(self.timeout)),
                                    application_name="deltamem-agents")
        except self._pg.Error as exc:
            raise StoreError(f"cannot connect to Postgres at {self._safe_conninfo()}: "
                             f"{str(exc).strip() or type(exc).__name__}") from exc

    def _new_pools(self) -> None:
        self._pid = os.getpid()
        self._pool = _Pool(self._connect, self.pool_size, self.timeout)
        self._lock_pool = _Pool(self._connect, None, self.timeout)  # holders must never starve commits

    def _pools(self) -> tuple[_Pool, _Pool]:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        if os.getpid() != self._pid:  # forked child: the parent's sockets are not ours to use or close
            self._new_pools()  # (psycopg never finalises a connection outside the process that made it)
        return self._pool, self._lock_pool

    @contextmanager
    def _txn(self, write: bool = True) -> Iterator[Any]:
        """A cursor in one transaction (or a lone statement if not ``write``); psycopg errors -> StoreError."""
        pool, _ = self._pools()
        try:
            with pool.connection() as conn:
                if write:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
        except DeltaMemError:
            raise
        except self._pg.Error as exc:
            raise self._store_error("session database", exc) from exc

    def _init_schema(self) -> None:
        with self._txn() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))  # one creator at a time
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            if cur.fetchone() is None:  # CREATE SCHEMA needs a privilege an existing schema does not
                cur.execute(self._sql["create_schema"])
            for statement in self._ddl:
                cur.execute(statement)
            row = cur.execute(self._sql["schema_version"]).fetchone()
            found = 0 if row is None else row[0]
            if found > SCHEMA_VERSION:
                raise StoreError(f"{self!r} has session schema version {found}; this deltamem-agents "
                                 f"understands up to {SCHEMA_VERSION} (upgrade the package)")
            if found < SCHEMA_VERSION:
                cur.execute(self._sql["set_schema_version"], (SCHEMA_VERSION,))

    def close(self) -> None:
        """Close every pooled connection (a lock still held keeps its connection until released)."""
        self._closed = True
        if os.getpid() == self._pid:
            self._pool.close()
            self._lock_pool.close()

    # -- cross-process per-session lock and maintenance -------------------------------------
    @contextmanager
    def session_lock(self, session_id: str, *, timeout: float | None = None) -> Iterator[None]:
        """Hold the session's advisory lock (across processes; re-entrant only via SessionStore.lock).

        Raises SessionBusyError if ``timeout`` seconds (None: wait forever) pass first.
        """
        _, pool = self._pools()
        key = _lock_key(self.schema, session_id)
        errors = self._pg.errors
        try:
            with pool.connection() as conn:
                try:
                    if timeout is not None and timeout <= 0:
                        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
                    else:
                        ms = "0" if timeout is None else str(max(1, int(timeout * 1000)))
                        conn.execute("SELECT set_config('lock_timeout', %s, false)", (ms,))
                        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                        got = True
                except errors.LockNotAvailable:
                    got = False
                if not got:
                    raise SessionBusyError(f"session {session_id!r} is busy (held by another process; "
                                           f"not acquired in {timeout} s)")
                try:
                    yield
                finally:
                    if not conn.closed and not conn.broken:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except DeltaMemError:
            raise
        except self._pg.Error as exc:
            raise self._store_error("session lock on", exc) from exc

    def _store_error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{what} {self._safe_conninfo()}: {str(exc).strip() or type(exc).__name__}")

    def vacuum(self) -> None:
        """VACUUM the session tables now, so deleted sessions' dead tuples are reclaimed."""
        pool, _ = self._pools()
        try:
            with pool.connection() as conn:
                conn.execute(self._sql["vacuum"])
        except self._pg.Error as exc:
            raise StoreError(f"VACUUM on {self._safe_conninfo()} failed: {exc}") from exc

    # -- primitives ----------------------------------------------------------------------------
    def _read(self, cur: Any, session_id: str) -> RawSession | None:
        row = cur.execute(self._sql["read"], (session_id,)).fetchone()
        if row is None:
            return None
        state, metadata, version, created_at, updated_at, idx, texts = row
        if list(idx) != list(range(len(idx))):
            raise CorruptSessionError(f"session {session_id!r}: message log has gaps or is out of order")
        return RawSession(session_id, None if state is None else bytes(state), tuple(texts), metadata,
                          int(version), created_at, updated_at)

    def _get(self, session_id: str) -> RawSession | None:
        with self._txn(write=False) as cur:
            return self._read(cur, session_id)

    def _stamp(self, session_id: str) -> tuple[int, float] | None:
        with self._txn(write=False) as cur:
            row = cur.execute(self._sql["stamp"], (session_id,)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def _create(self, session_id: str, metadata: str) -> RawSession:
        now = time.time()
        with self._txn(write=False) as cur:
            if cur.execute(self._sql["create"], (session_id, metadata, now, now)).rowcount == 0:
                raise exists(session_id)
        return RawSession(session_id, None, (), metadata, 0, now, now)

    def _check_current(self, cur: Any, session_id: str, expected_version: int) -> tuple[float, float]:
        """Lock the session row; (created_at, updated_at) if it is at ``expected_version``."""
        row = cur.execute(self._sql["lock_row"], (session_id,)).fetchone()
        if row is None:
            raise not_found(session_id)
        version, created_at, updated_at = row
        if version != expected_version:
            raise conflict(session_id, expected_version, int(version))
        return created_at, updated_at

    def _insert_log(self, cur: Any, session_id: str, start: int, texts: tuple[str, ...]) -> None:
        if texts:
            cur.execute(self._sql["insert_log"], (session_id, list(range(start, start + len(texts))), list(texts)))

    def _commit(self, session_id: str, payload: EncodedPayload, expected_version: int) -> RawSession:
        version = expected_version + 1
        with self._txn() as cur:
            created_at, updated_at = self._check_current(cur, session_id, expected_version)
            now = max(time.time(), updated_at)
            cur.execute(self._sql["update"], (payload.state, payload.metadata, version, now, session_id))
            old = [j for (j,) in cur.execute(self._sql["log"], (session_id,))]
            new = payload.messages
            keep = 0  # length of the unchanged prefix: only the tail is rewritten
            while keep < min(len(old), len(new)) and old[keep] == new[keep]:
                keep += 1
            if keep < len(old):
                cur.execute(self._sql["truncate_log"], (session_id, keep))
            self._insert_log(cur, session_id, keep, new[keep:])
        return RawSession(session_id, payload.state, new, payload.metadata, version, created_at, now)

    def _append(self, session_id: str, payload: EncodedPayload, expected_version: int,
                base_length: int, created_at: float | None) -> tuple[int, float, float] | None:
        """Insert only the new rows: reads one session row and one index entry, whatever the log's length."""
        with self._txn() as cur:
            stored_created_at, updated_at = self._check_current(cur, session_id, expected_version)
            last = cur.execute(self._sql["log_length"], (session_id,)).fetchone()
            stored_length = last[0] if last else 0
            if stored_length != base_length or (created_at is not None and created_at != stored_created_at):
                return None  # the stored log is not the one the caller extends: nothing written
            now = max(time.time(), updated_at)
            cur.execute(self._sql["update"], (payload.state, payload.metadata, expected_version + 1, now,
                                              session_id))
            self._insert_log(cur, session_id, base_length, payload.messages)
        return expected_version + 1, stored_created_at, now

    def _list(self, prefix: str | None) -> list[str]:
        with self._txn(write=False) as cur:
            if prefix is None:
                rows = cur.execute(self._sql["list"]).fetchall()
            else:  # starts_with, not LIKE: LIKE treats % and _ as wildcards
                rows = cur.execute(self._sql["list_prefix"], (prefix,)).fetchall()
        return [r[0] for r in rows]

    def _delete(self, session_id: str) -> bool:
        with self._txn(write=False) as cur:  # one statement; the log goes with the row (ON DELETE CASCADE)
            return cur.execute(self._sql["delete"], (session_id,)).rowcount > 0

    def _copy(self, src_id: str, dst_id: str) -> RawSession:
        now = time.time()
        with self._txn() as cur:
            if cur.execute(self._sql["share_row"], (src_id,)).fetchone() is None:  # no commit to src meanwhile
                raise not_found(src_id)
            if cur.execute(self._sql["copy_row"], (dst_id, now, now, src_id)).rowcount == 0:
                raise exists(dst_id)
            cur.execute(self._sql["copy_log"], (dst_id, src_id))
            raw = self._read(cur, dst_id)
        assert raw is not None
        return raw
