"""The Postgres session backend against a real Postgres server (one for the test session, a fresh schema per
test; see conftest.py): the shared store contract, its schema and errors, the cost of a turn commit, and
several processes sharing one store (no lost update, the per-session lock holds across processes, sessions
never see each other)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from deltamem_agents.errors import ConcurrentWriteError, CorruptSessionError, SessionBusyError, StoreError
from deltamem_agents.runtime.store import SessionStore
from tests.runtime.conftest import with_query
from tests.runtime.store_contract import StoreContract, _assert_coherent, _commit, _turn, child_env

psycopg = pytest.importorskip("psycopg")
from deltamem_agents.runtime.store_postgres import PostgresBackend  # noqa: E402

CHILD = str(Path(__file__).with_name("store_child.py"))


def _raw(url: str, schema: str, query: str, params: tuple = ()) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')  # a test-made identifier
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


class TestPostgresContract(StoreContract):
    @pytest.fixture
    def make_backend(self, postgres_url, pg_schema):
        return lambda: PostgresBackend(postgres_url, schema=pg_schema, pool_size=4)

    @pytest.fixture
    def store_url(self, postgres_url, pg_schema):
        return with_query(postgres_url, schema=pg_schema)

    def message_rows(self, backend):
        return [tuple(r) for r in _raw(backend.conninfo, backend.schema,
                                       "SELECT session_id, idx FROM messages ORDER BY session_id, idx")]


@pytest.fixture
def pg(postgres_url, pg_schema):
    b = PostgresBackend(postgres_url, schema=pg_schema, pool_size=4)
    yield b
    b.close()


# -- schema, errors, connections ---------------------------------------------------------------------
def test_schema_is_created_once_from_many_threads_and_versioned(postgres_url, pg_schema):
    backends: list = []
    threading_errors: list = []

    def open_one():
        try:
            backends.append(PostgresBackend(postgres_url, schema=pg_schema))
        except Exception as exc:  # pragma: no cover - reported below
            threading_errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not threading_errors and len(backends) == 4
    backends[0].create("a")
    assert [b.list() for b in backends] == [["a"]] * 4  # one set of tables
    assert _raw(postgres_url, pg_schema, "SELECT version FROM schema_info") == [(1,)]
    for b in backends:
        b.close()
    with pytest.raises(StoreError, match="closed"):
        backends[0].get("a")
    _raw(postgres_url, pg_schema, "UPDATE schema_info SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        PostgresBackend(postgres_url, schema=pg_schema)


def test_bad_arguments_and_unreachable_server(tmp_path):
    for bad in ("Upper", "1abc", "a-b", "x;drop", "", "a" * 64):
        with pytest.raises(ValueError, match="schema"):
            PostgresBackend("postgresql://nobody@/x", schema=bad)
    with pytest.raises(ValueError, match="pool_size"):
        PostgresBackend("postgresql://nobody@/x", pool_size=0)
    with pytest.raises(StoreError, match="cannot connect") as ei:
        PostgresBackend(f"postgresql://u:s3cret@/db?host={tmp_path}", timeout=2)
    assert "s3cret" not in str(ei.value)  # the password is never shown


def test_corrupt_rows_are_detected(pg, postgres_url, pg_schema):
    for sid in ("gap", "json"):
        pg.create(sid)
        pg.commit(sid, state=b"x", messages=[{"a": 1}, {"b": 2}, {"c": 3}], metadata={}, expected_version=0)
    _raw(postgres_url, pg_schema, "DELETE FROM messages WHERE session_id = 'gap' AND idx = 1")
    with pytest.raises(CorruptSessionError, match="gaps"):
        pg.get("gap")
    _raw(postgres_url, pg_schema, "UPDATE sessions SET metadata = '{not json' WHERE id = 'json'")
    with pytest.raises(CorruptSessionError, match="undecodable"):
        pg.get("json")
    pg.vacuum()  # runs outside a transaction, on the session tables


def test_lost_connections_are_replaced(pg, postgres_url):
    pg.create("s")
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # kill every backend connection of the pool
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'deltamem-agents' AND pid <> pg_backend_pid()")
    with pytest.raises(StoreError):  # the first use of a dead connection fails cleanly...
        pg.get("s")
    assert pg.get("s").version == 0  # ...and it is dropped from the pool, not reused


def test_a_forked_child_opens_its_own_connections(pg):
    import os

    pg.create("s")
    assert pg.get("s").version == 0  # the parent has a pooled connection now
    pid = os.fork()
    if pid == 0:  # the child: must not talk over the parent's socket
        code = 1
        try:
            pg.commit("s", state=b"child", messages=[{"by": "child"}], metadata={}, expected_version=0)
            pg.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rec = pg.get("s")  # the parent's connection still works and sees the child's commit
    assert (rec.version, rec.state) == (1, b"child")


class _Cursor:
    """A cursor that records each statement it runs and the rows that statement changed."""

    def __init__(self, cur, log: list) -> None:
        self._cur, self._log = cur, log

    def execute(self, query, params=None):
        out = self._cur.execute(query, params)
        self._log.append((query.as_string(self._cur), self._cur.rowcount))
        return out

    def __getattr__(self, name):
        return getattr(self._cur, name)


def _record_statements(backend: PostgresBackend, monkeypatch) -> list[tuple[str, int]]:
    log: list[tuple[str, int]] = []
    real = backend._txn

    @contextmanager
    def txn(write: bool = True):
        with real(write) as cur:
            yield _Cursor(cur, log)

    monkeypatch.setattr(backend, "_txn", txn)
    return log


def test_turn_commit_after_2000_messages_touches_only_the_new_rows(pg, monkeypatch):
    store = SessionStore(pg)
    log = [_turn(i) for i in range(2000)]
    rec = store.commit(store.get_or_create("long"), state=b"s" * 1000, messages=log, metadata={})
    log += [_turn(2000), {"role": "assistant", "content": "ok"}]
    statements = _record_statements(pg, monkeypatch)
    rec = store.commit(rec, state=b"t" * 1000, messages=log, metadata={"n": len(log)})
    changed = [(t.split()[0], re.search(r'"\.(\w+)', t)[1], n) for t, n in statements if not t.startswith("SELECT")]
    assert changed == [("UPDATE", "sessions", 1), ("INSERT", "messages", 2)]  # the row and the two new messages
    assert not [t for t, _ in statements if "SELECT json" in t]  # the log is never read back
    assert list(pg.get("long").messages) == log and pg.get("long").version == 2


# -- several processes on one store ------------------------------------------------------------------
def _children(url: str, runs: list[tuple[str, str, int, str]]) -> list[str]:
    procs = [subprocess.Popen([sys.executable, CHILD, url, mode, sid, str(n), tag], env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mode, sid, n, tag in runs]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def test_processes_racing_with_optimistic_versions_lose_no_update(pg, postgres_url):
    url = with_query(postgres_url, schema=pg.schema)
    _children(url, [("retry", "shared", 25, "A"), ("retry", "shared", 25, "B")])
    rec = pg.get("shared")
    assert rec.version == 50 and rec.metadata["count"] == 50  # every turn counted once
    for tag in "AB":  # each process's turns, all present and in its order
        assert [m["i"] for m in rec.messages if m["tag"] == tag] == list(range(25))


def test_session_lock_excludes_other_processes(pg, postgres_url):
    url = with_query(postgres_url, schema=pg.schema)
    # two processes doing read-modify-commit under the lock with no retry: any overlap, or a stale cached
    # copy read under the lock, would raise ConcurrentWriteError in one of them
    _children(url, [("locked", "shared", 20, "A"), ("locked", "shared", 20, "B")])
    rec = pg.get("shared")
    assert rec.version == 40 and rec.metadata["count"] == 40
    store = SessionStore(pg)
    holder = subprocess.Popen([sys.executable, CHILD, url, "hold", "shared", "0", "H"], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SessionBusyError):
            with store.lock("shared", timeout=0.2):
                pass
        with pytest.raises(SessionBusyError):
            with store.lock("shared", timeout=0):
                pass
        with store.lock("other", timeout=1):  # other sessions are not blocked
            pass
        holder.kill()  # a holder that dies releases the lock with its connection
        holder.wait(30)
        with store.lock("shared", timeout=10), store.lock("shared"):  # and it is re-entrant in-process
            _commit(store, store.get("shared"), "parent")
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert store._turn_locks == {} and pg.get("shared").version == 41


def test_processes_on_different_sessions_never_see_each_other(pg, postgres_url):
    url = with_query(postgres_url, schema=pg.schema)
    _children(url, [("own", f"user-{t}", 30, t) for t in "ABC"])
    assert pg.list() == ["user-A", "user-B", "user-C"]
    for t in "ABC":
        rec = pg.get(f"user-{t}")
        assert rec.version == 30 and {m["tag"] for m in rec.messages} == {t}
    other = PostgresBackend(postgres_url, schema=pg.schema + "_other")  # another schema: another store
    try:
        assert other.list() == [] and other.get("user-A") is None
    finally:
        other.close()
        _raw(postgres_url, pg.schema, f'DROP SCHEMA "{pg.schema}_other" CASCADE')


def test_threads_racing_across_two_backends_never_tear(postgres_url, pg_schema):
    a, b = (PostgresBackend(postgres_url, schema=pg_schema, pool_size=2) for _ in range(2))
    start = _commit(a, a.create("shared"), "init")
    wins, conflicts = [], []
    barrier = threading.Barrier(6)

    def work(i):
        barrier.wait()
        try:
            wins.append(_commit(a if i % 2 else b, start, f"w{i}", n=i + 1))
        except ConcurrentWriteError:
            conflicts.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wins) == 1 and len(conflicts) == 5
    assert _assert_coherent(b.get("shared")) == wins[0].metadata["writer"]
    a.close()
    b.close()
