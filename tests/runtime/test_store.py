"""Tests of the session store's memory and SQLite backends: the shared contract (store_contract.py) run
against each, plus what is SQLite's own (secure delete on disk, schema version, raw rows, cost of a turn
commit) and the SessionStore's LRU cache."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltamem_agents.errors import CorruptSessionError, StoreError
from deltamem_agents.runtime.store import MemoryBackend, SessionBackend, SessionStore, SQLiteBackend
from tests.runtime.store_contract import MESSAGES, StoreContract, _turn

MARKER = b"<<DELTAMEM-FORGET-ME:7f3a9c1e5b2d8f4a6c0e9b7d3f1a5c8e2b4d6f8a0>>"
assert len(MARKER) == 64


class _DefaultAppendBackend(MemoryBackend):
    """A backend that does not override ``_append``: the base class's read-then-commit default."""

    _append = SessionBackend._append


class TestMemoryContract(StoreContract):
    @pytest.fixture
    def make_backend(self):
        shared = MemoryBackend()  # "reopening" a memory store is the same dict
        return lambda: shared


class TestDefaultAppendContract(StoreContract):
    @pytest.fixture
    def make_backend(self):
        shared = _DefaultAppendBackend()
        return lambda: shared


class TestSQLiteContract(StoreContract):
    @pytest.fixture
    def make_backend(self, tmp_path):
        return lambda: SQLiteBackend(tmp_path / "nested" / "dir" / "sessions.db")

    @pytest.fixture
    def store_url(self, tmp_path):
        return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'sessions.db'}"

    def message_rows(self, backend):
        with sqlite3.connect(backend.path) as raw:
            return raw.execute("SELECT session_id, idx FROM messages ORDER BY session_id, idx").fetchall()


# -- SQLite on disk ---------------------------------------------------------------------------------
def _raw_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def test_deleted_state_bytes_absent_from_database_files(tmp_path):
    db = tmp_path / "s.db"
    backend = SQLiteBackend(db)
    backend.create("keep")
    backend.commit("keep", state=b"other" * 100, messages=MESSAGES, metadata={}, expected_version=0)
    rec = backend.create("secret")
    for i in range(3):  # several versions: old copies of the marker in the WAL and freed pages
        rec = backend.commit("secret", state=os.urandom(i * 3000) + MARKER * (20 + i) + os.urandom(50),
                             messages=[{"role": "user", "content": MARKER.decode() + str(i)}] * (i + 1),
                             metadata={"m": MARKER.decode()}, expected_version=rec.version)
    assert MARKER in _raw_bytes(db)  # the check below is meaningful
    assert backend.delete("secret")
    assert MARKER not in _raw_bytes(db)
    backend.vacuum()
    assert MARKER not in _raw_bytes(db)
    assert backend.get("keep").state == b"other" * 100
    backend.close()


def test_lru_eviction_keeps_at_most_cache_size(tmp_path):
    store = SessionStore(SQLiteBackend(tmp_path / "s.db"), cache_size=3)
    expected = {}
    for i in range(10):
        rec = store.get_or_create(f"s{i}")
        expected[f"s{i}"] = store.commit(rec, state=bytes([i]) * 10, messages=[{"i": i}], metadata={"i": i})
        assert store.cache_info()["size"] <= 3
    for _ in range(2):
        for sid, rec in expected.items():
            assert store.get(sid) == rec
            assert store.cache_info()["size"] <= 3
    info = store.cache_info()
    assert info["size"] == 3 and info["misses"] >= 20  # evicted entries came from the backend
    assert store.get("s9") == expected["s9"] and store.cache_info()["hits"] > info["hits"]
    nocache = SessionStore(store.backend, cache_size=0)
    assert nocache.get("s5") == expected["s5"] and nocache.cache_info()["size"] == 0
    store.close()


def test_closed_backend_and_newer_schema(tmp_path):
    backend = SQLiteBackend(tmp_path / "s.db")
    backend.close()
    with pytest.raises(StoreError, match="closed"):
        backend.get("a")
    with sqlite3.connect(tmp_path / "s.db") as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteBackend(tmp_path / "s.db")
    with pytest.raises(ValueError):
        SQLiteBackend(":memory:")


def test_corrupt_stored_json_detected(tmp_path):
    backend = SQLiteBackend(tmp_path / "s.db")
    backend.create("s")
    with sqlite3.connect(tmp_path / "s.db") as raw:
        raw.execute("UPDATE sessions SET metadata = ? WHERE id = ?", ("{not json", "s"))
    with pytest.raises(CorruptSessionError):
        backend.get("s")
    backend.close()


# -- property test ---------------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.dictionaries(st.text(max_size=10), _json, max_size=4), max_size=6),
    metadata=st.dictionaries(st.text(max_size=10), _json, max_size=5),
    state=st.none() | st.binary(max_size=512),
)
def test_property_export_import_round_trip(messages, metadata, state):
    store = SessionStore(MemoryBackend())
    rec = store.commit(store.get_or_create("p"), state=state, messages=messages, metadata=metadata)
    with tempfile.TemporaryDirectory() as tmp:
        path = store.export_session("p", Path(tmp) / "p.json")
        back = store.import_session(path, "q")
    assert back.state == state and list(back.messages) == messages and back.metadata == metadata
    assert (back.messages, back.metadata) == (rec.messages, rec.metadata)


# -- append-only commits: cost of a turn commit ----------------------------------------------------
class _SQLiteMeter:
    """What a block does on this thread's connection of a SQLiteBackend: SQLite VM steps (in units of
    10, via the progress handler), rows inserted/updated/deleted (``total_changes``) and statements."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self.conn = backend._conn()
        self.steps, self.changes, self.statements = 0, 0, []

    def _tick(self) -> int:
        self.steps += 1
        return 0

    def __enter__(self) -> "_SQLiteMeter":
        self._changes0 = self.conn.total_changes
        self.conn.set_progress_handler(self._tick, 10)
        self.conn.set_trace_callback(self.statements.append)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.set_progress_handler(None, 0)
        self.conn.set_trace_callback(None)
        self.changes = self.conn.total_changes - self._changes0


def test_turn_commit_after_2000_messages_touches_only_the_new_rows(tmp_path):
    store = SessionStore(SQLiteBackend(tmp_path / "s.db"))
    rec, log, meters = store.get_or_create("long"), [], {}
    for size in (20, 2000):
        log += [_turn(i) for i in range(len(log), size)]
        rec = store.commit(rec, state=b"s" * 1000, messages=log, metadata={"n": len(log)})
        log += [_turn(size), {"role": "assistant", "content": "ok"}]
        with _SQLiteMeter(store.backend) as meters[size]:
            rec = store.commit(rec, state=b"t" * 1000, messages=log, metadata={"n": len(log)})
        assert meters[size].changes == 3  # the session row and the two new message rows, nothing else
        assert not [s for s in meters[size].statements if "SELECT json" in s]  # the log is never read back
    assert meters[2000].steps <= 2 * meters[20].steps + 2  # SQLite's work does not grow with the log
    assert list(store.backend.get("long").messages) == log
    # the meter would catch an O(messages) commit: the full path (no cached copy) reads every row
    full = SessionStore(store.backend, cache_size=0)
    log.append(_turn(len(log)))
    with _SQLiteMeter(store.backend) as slow:
        full.commit("long", state=b"u", messages=log, metadata={}, expected_version=rec.version)
    assert slow.changes == 2 and slow.steps > 20 * meters[2000].steps
    assert list(store.backend.get("long").messages) == log
    store.close()
