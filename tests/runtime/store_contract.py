"""The session-store contract, one suite for every backend: subclass :class:`StoreContract` and give it a
``make_backend`` fixture (a callable opening a backend on the same storage each call, like another process
would) and, for backends a second process can open, a ``store_url`` fixture.

It covers round trips, versions and optimistic concurrency, payload and id validation, list/delete/fork,
snapshot/restore, export/import integrity, append-only commits and their fallbacks, and concurrency from
threads and from a second process.  Backend-specific checks (files on disk, raw rows) live beside each
subclass; :meth:`StoreContract.message_rows` lets the shared tests look at raw rows where a backend has
them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltamem_agents.errors import (
    ConcurrentWriteError,
    CorruptSessionError,
    DeltaMemError,
    InvalidSessionDataError,
    InvalidSessionIdError,
    SessionBusyError,
    SessionExistsError,
    SessionNotFoundError,
)
from deltamem_agents.runtime.store import SessionRecord, SessionStore, validate_session_id

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE = bytes(range(256)) * 3 + b"\x00\xff tail"
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "héllo \u2603 \U0001f600 \"quoted\" ; DROP TABLE sessions; --"},
    {"role": "assistant", "content": "hi", "tool_calls": [{"name": "f", "args": {"x": [1, 2.5, None, True]}}]},
]
METADATA = {"user": "u1", "tags": ["a", "b"], "nested": {"k": 1.25, "z": None}}


def _commit(target, rec, tag: str, n: int = 1) -> SessionRecord:
    """Commit a payload whose every part carries ``tag`` (to detect torn records)."""
    return target.commit(rec.session_id, state=tag.encode() * 16,
                         messages=[{"role": "user", "content": tag}] * n,
                         metadata={"writer": tag, "n": n}, expected_version=rec.version)


def _assert_coherent(rec: SessionRecord) -> str:
    """The record is exactly one writer's complete commit; returns that writer's tag."""
    tag = rec.metadata["writer"]
    assert rec.state == tag.encode() * 16
    assert list(rec.messages) == [{"role": "user", "content": tag}] * rec.metadata["n"]
    return tag


def _turn(i: int, size: int = 20) -> dict:
    return {"role": "user", "content": f"turn {i}: " + "x" * size}


def _run_threads(n, target):
    errors: list[BaseException] = []

    def wrap(i):
        try:
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def child_env() -> dict:
    """The environment for a child Python process that imports this checkout."""
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


BAD_PAYLOADS = [
    {"state": "not bytes"},
    {"state": [1, 2]},
    {"messages": "hello"},
    {"messages": {"role": "user"}},
    {"messages": [{"role": "user"}, "text"]},
    {"messages": [{"content": object()}]},
    {"messages": [{"content": b"bytes"}]},
    {"messages": [{"x": float("nan")}]},
    {"messages": [{"x": float("inf")}]},
    {"metadata": [1, 2]},
    {"metadata": {1: "int key"}},
    {"metadata": {"s": {1, 2}}},
    {"expected_version": "1"},
    {"expected_version": True},
    {"expected_version": -1},
]

BAD_IDS = ["../x", "a/b", "a\\b", "x;DROP TABLE sessions", "", "a b", "\x00", "x\x00y", "x\n", " x",
           "-x", ".hidden", "'quoted'", '"q"', "é", "a" * 129, 5, None, b"bytes", ["x"]]

_OPS = st.lists(st.tuples(st.sampled_from(["append", "truncate", "edit", "edit-in-place", "read"]),
                          st.integers(0, 5)), max_size=12)


def _tamper(doc: dict, kind: str) -> bytes:
    if kind == "sha_mismatch":
        state = bytearray(base64.b64decode(doc["state_b64"]))
        state[10] ^= 0xFF
        doc["state_b64"] = base64.b64encode(bytes(state)).decode()
    elif kind == "messages_altered":
        doc["messages"][0]["content"] = "injected"
    elif kind == "wrong_format":
        doc["format"] = "something-else"
    elif kind == "wrong_version":
        doc["format_version"] = 2
    elif kind == "bool_version":
        doc["format_version"] = True
    elif kind == "bad_base64":
        doc["state_b64"] = "!!not base64!!"
    elif kind == "missing_sha":
        del doc["state_sha256"]
    elif kind == "messages_not_list":
        doc["messages"] = {"role": "user"}
    elif kind == "metadata_not_dict":
        doc["metadata"] = [1]
    elif kind == "bad_session_id":
        doc["session_id"] = "../etc/passwd"
    elif kind == "pickle_like":
        return b"\x80\x04\x95" + os.urandom(32)
    elif kind == "not_an_object":
        return b"[1, 2, 3]"
    elif kind == "nan_constant":
        return json.dumps(doc).replace('"format_version": 1', '"format_version": NaN').encode()
    raw = json.dumps(doc).encode()
    if kind == "truncated":
        return raw[: len(raw) // 2]
    if kind == "bad_json":
        return raw.replace(b"{", b"{{", 1)
    return raw


TAMPERS = ["sha_mismatch", "messages_altered", "wrong_format", "wrong_version", "bool_version",
           "bad_base64", "missing_sha", "messages_not_list", "metadata_not_dict", "bad_session_id",
           "pickle_like", "not_an_object", "nan_constant", "truncated", "bad_json"]



class StoreContract:
    """The behaviour every :class:`SessionBackend` shares.  Subclasses provide ``make_backend`` (and
    ``store_url`` when a second process can open the storage) and may override :meth:`message_rows`."""

    @pytest.fixture
    def store_url(self):
        pytest.skip("this backend cannot be opened from a second process")

    @pytest.fixture
    def backend(self, make_backend):
        b = make_backend()
        yield b
        b.close()

    @pytest.fixture
    def store(self, backend):
        s = SessionStore(backend, cache_size=4)
        yield s
        s.close()

    def message_rows(self, backend) -> list[tuple[str, int]] | None:
        """The stored (session_id, idx) message rows, read raw; None if the backend has no rows to look at."""
        return None

    def test_create_get_commit_round_trip(self, backend):
        rec = backend.create("user-1", {"a": 1})
        assert (rec.state, rec.messages, rec.metadata, rec.version) == (None, (), {"a": 1}, 0)
        assert backend.get("user-1") == rec
        r1 = backend.commit("user-1", state=STATE, messages=MESSAGES, metadata=METADATA, expected_version=0)
        assert r1.version == 1 and r1.state == STATE and r1.created_at == rec.created_at
        got = backend.get("user-1")
        assert got == r1 and type(got.state) is bytes and got.state == STATE
        assert list(got.messages) == MESSAGES and got.metadata == METADATA
        r2 = backend.commit("user-1", state=b"", messages=MESSAGES[:1], metadata={}, expected_version=1)
        assert r2.version == 2 and backend.get("user-1").state == b""  # empty bytes is not None
        r3 = backend.commit("user-1", state=None, messages=[], metadata=None, expected_version=2)
        assert (r3.version, r3.state, r3.messages, r3.metadata) == (3, None, (), {})
        assert r3.updated_at >= r2.updated_at >= r1.updated_at
        assert backend.get("missing") is None

    def test_create_existing_and_commit_missing(self, backend):
        backend.create("a")
        with pytest.raises(SessionExistsError):
            backend.create("a")
        with pytest.raises(SessionNotFoundError, match="no session with id 'nope'") as ei:
            backend.commit("nope", state=None, messages=[], metadata={}, expected_version=0)
        assert isinstance(ei.value, KeyError) and str(ei.value).startswith("no session")

    def test_stale_version_raises_and_leaves_record_intact(self, backend):
        backend.create("s")
        good = backend.commit("s", state=b"v1", messages=[{"c": 1}], metadata={"v": 1}, expected_version=0)
        for stale in (0, 2, 7):
            with pytest.raises(ConcurrentWriteError) as ei:
                backend.commit("s", state=b"bad", messages=[{"c": "bad"}], metadata={"v": "bad"},
                               expected_version=stale)
            assert (ei.value.expected_version, ei.value.actual_version) == (stale, 1)
        assert backend.get("s") == good

    @pytest.mark.parametrize("bad", BAD_PAYLOADS, ids=[str(i) for i in range(len(BAD_PAYLOADS))])
    def test_invalid_payload_rejected_before_any_write(self, backend, bad):
        backend.create("s")
        good = backend.commit("s", state=STATE, messages=MESSAGES, metadata=METADATA, expected_version=0)
        kwargs = {"state": b"new", "messages": [{"role": "user"}], "metadata": {}, "expected_version": 1, **bad}
        with pytest.raises(InvalidSessionDataError) as ei:
            backend.commit("s", **kwargs)
        assert isinstance(ei.value, TypeError) and isinstance(ei.value, ValueError)
        assert backend.get("s") == good

    def test_circular_metadata_rejected(self, backend):
        backend.create("s")
        loop: dict = {}
        loop["self"] = loop
        with pytest.raises(InvalidSessionDataError, match="circular"):
            backend.commit("s", state=None, messages=[], metadata=loop, expected_version=0)
        assert backend.get("s").version == 0

    def test_list_with_prefix(self, backend):
        ids = ["user-2", "user-1", "User-3", "userXa", "user_x", "thread:42", "a.b"]
        for sid in ids:
            backend.create(sid)
        assert backend.list() == sorted(ids)
        assert backend.list("user-") == ["user-1", "user-2"]  # case-sensitive
        assert backend.list("user_") == ["user_x"]  # '_' is literal, not a LIKE wildcard
        assert backend.list("%") == [] and backend.list("a.") == ["a.b"]
        assert backend.list("thread:") == ["thread:42"] and backend.list("zzz") == []
        assert backend.list("") == backend.list()

    def test_fork_copies_then_diverges(self, store):
        rec = store.get_or_create("src", {"who": "src"})
        rec = store.commit(rec, state=STATE, messages=MESSAGES, metadata=METADATA)
        fork = store.fork("src", "dst")
        assert (fork.state, fork.messages, fork.metadata, fork.version) == (STATE, rec.messages, METADATA, 0)
        f1 = store.commit(fork, state=b"fork", messages=[*fork.messages, {"role": "user", "content": "f"}],
                          metadata={"forked": True})
        assert store.get("src") == rec
        s2 = store.commit(rec, state=b"src2", messages=[], metadata={})
        assert store.get("dst") == f1 and store.backend.get("dst") == f1 and store.get("src") == s2
        with pytest.raises(SessionExistsError):
            store.fork("src", "dst")
        with pytest.raises(SessionNotFoundError):
            store.fork("missing", "other")

    def test_records_handed_out_are_private_copies(self, store):
        rec = store.commit(store.get_or_create("s"), state=STATE, messages=MESSAGES, metadata=METADATA)
        rec.messages[1]["content"] = "mutated"
        rec.metadata["nested"]["k"] = "mutated"
        got = store.get("s")
        got.messages[0]["content"] = "mutated too"
        assert list(store.get("s").messages) == MESSAGES and store.get("s").metadata == METADATA

    def test_snapshot_and_restore(self, store):
        rec = store.commit(store.get_or_create("s"), state=b"one", messages=MESSAGES[:1], metadata={"v": 1})
        snap = store.snapshot("s")
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.state = b"x"  # type: ignore[misc]
        rec2 = store.commit(rec, state=b"two", messages=MESSAGES, metadata={"v": 2})
        assert snap.state == b"one" and snap.version == 1  # unaffected by later commits
        restored = store.restore("s", snap)
        assert restored.version == rec2.version + 1
        assert (restored.state, restored.messages, restored.metadata) == (b"one", tuple(MESSAGES[:1]), {"v": 1})
        with pytest.raises(ConcurrentWriteError):
            store.restore("s", snap, expected_version=0)
        store.delete("s")
        again = store.restore("s", snap)  # restoring a forgotten session re-creates it
        assert again.state == b"one" and again.version == 1
        with pytest.raises(SessionNotFoundError):
            store.snapshot("never")

    def test_export_import_round_trip(self, store, tmp_path):
        rec = store.commit(store.get_or_create("user-1"), state=STATE, messages=MESSAGES, metadata=METADATA)
        path = store.export_session("user-1", tmp_path / "out" / "user-1.json")
        doc = json.loads(path.read_text())
        assert {"format", "format_version", "session_id", "metadata", "messages", "state_b64",
                "state_sha256", "exported_at"} <= set(doc)
        assert doc["format"] == "deltamem-session" and doc["format_version"] == 1
        assert doc["state_sha256"] == hashlib.sha256(STATE).hexdigest()
        assert base64.b64decode(doc["state_b64"]) == STATE
        copy = store.import_session(path, "user-2")
        assert (copy.state, copy.messages, copy.metadata, copy.version) == (STATE, rec.messages, METADATA, 1)
        with pytest.raises(SessionExistsError):
            store.import_session(path)
        store.commit(store.get("user-1"), state=b"changed", messages=[], metadata={})
        back = store.import_session(path, overwrite=True)
        assert back.version == 3 and back.state == STATE and list(back.messages) == MESSAGES
        store.get_or_create("empty")
        store.export_session("empty", tmp_path / "empty.json")
        assert json.loads((tmp_path / "empty.json").read_text())["state_b64"] is None
        assert store.import_session(tmp_path / "empty.json", "empty2").state is None

    @pytest.mark.parametrize("kind", TAMPERS)
    def test_import_of_tampered_file_raises_and_changes_nothing(self, store, tmp_path, kind):
        store.commit(store.get_or_create("victim"), state=STATE, messages=MESSAGES, metadata=METADATA)
        path = store.export_session("victim", tmp_path / "v.json")
        before = store.backend.get("victim")
        path.write_bytes(_tamper(json.loads(path.read_text()), kind))
        with pytest.raises(CorruptSessionError):
            store.import_session(path, overwrite=True)
        with pytest.raises(CorruptSessionError):
            store.import_session(path, "fresh-id")
        assert store.backend.get("victim") == before and store.get("victim") == before
        assert store.list() == ["victim"]

    def test_valid_ids_accepted(self, backend):
        for sid in [str(uuid.uuid4()), "user-1", "thread:42", "a", "A" * 128, "x.y_z:1@h+b=c-d", "0"]:
            assert validate_session_id(sid) == sid
            assert backend.create(sid).session_id == sid
        assert isinstance(InvalidSessionIdError("x"), ValueError) and issubclass(InvalidSessionIdError, DeltaMemError)


    # -- concurrency ----------------------------------------------------------------------------------

    def test_threads_on_different_sessions(self, store):
        def work(i):
            rec = store.get_or_create(f"t{i}")
            for j in range(5):
                rec = _commit(store, rec, f"t{i}-{j}", n=j + 1)

        _run_threads(8, work)
        for i in range(8):
            rec = store.get(f"t{i}")
            assert rec.version == 5 and _assert_coherent(rec) == f"t{i}-4"
            assert store.backend.get(f"t{i}") == rec

    @pytest.mark.parametrize("via_store", [False, True])
    def test_threads_racing_on_one_session_same_expected_version(self, backend, via_store):
        target = SessionStore(backend) if via_store else backend
        start = _commit(target, backend.create("shared"), "init")
        barrier = threading.Barrier(8)
        wins: list[SessionRecord] = []
        conflicts: list[int] = []

        def work(i):
            barrier.wait()
            try:
                wins.append(_commit(target, start, f"w{i}", n=i + 1))
            except ConcurrentWriteError:
                conflicts.append(i)

        _run_threads(8, work)
        assert len(wins) == 1 and len(conflicts) == 7
        final = backend.get("shared")
        assert final.version == start.version + 1 == wins[0].version
        assert final == wins[0] and _assert_coherent(final) == wins[0].metadata["writer"]

    @pytest.mark.parametrize("via_store", [False, True])
    def test_threads_racing_with_retries_never_tear(self, backend, via_store):
        target = SessionStore(backend) if via_store else backend
        backend.create("shared")
        versions: list[int] = []

        def work(i):
            done = 0
            while done < 3:
                rec = target.get("shared")
                if rec.version:
                    _assert_coherent(rec)
                try:
                    versions.append(_commit(target, rec, f"w{i}-{done}", n=(i + done) % 5 + 1).version)
                    done += 1
                except ConcurrentWriteError:
                    pass

        _run_threads(8, work)
        assert sorted(versions) == list(range(1, 25))  # each success advanced the version exactly once
        final = backend.get("shared")
        assert final.version == 24
        _assert_coherent(final)

    def test_lock_serialises_turns_and_times_out(self, store):
        store.get_or_create("s")

        def turn(i):
            for _ in range(5):
                with store.lock("s"):
                    rec = store.get("s")
                    store.commit(rec, state=None, messages=[*rec.messages, {"i": i}], metadata={})

        _run_threads(4, turn)  # no ConcurrentWriteError: the lock serialised every read-modify-commit
        assert store.get("s").version == 20 and len(store.get("s").messages) == 20
        held, release = threading.Event(), threading.Event()

        def holder():
            with store.lock("s"):
                held.set()
                release.wait(10)

        t = threading.Thread(target=holder)
        t.start()
        held.wait(10)
        with pytest.raises(SessionBusyError):
            with store.lock("s", timeout=0.05):
                pass
        with store.lock("other", timeout=0.05):  # other sessions are not blocked
            pass
        release.set()
        t.join()
        with store.lock("s", timeout=1), store.lock("s"):  # re-entrant
            pass
        assert store._turn_locks == {}

    def test_turn_commit_after_2000_messages_encodes_and_copies_only_the_new_messages(self, store, monkeypatch):
        import tracemalloc

        from deltamem_agents.runtime import store_base

        encoded: list = []
        real_dumps = store_base.dumps_json
        monkeypatch.setattr(store_base, "dumps_json", lambda v: encoded.append(v) or real_dumps(v))
        rec, log, peaks = store.get_or_create("long"), [], {}
        for size in (20, 2000):
            log += [_turn(i, size=1000) for i in range(len(log), size)]
            rec = store.commit(rec, state=b"s" * 100, messages=log, metadata={"n": len(log)})
            log = [*log, _turn(size, size=1000)]
            encoded.clear()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                rec = store.commit(rec, state=b"t" * 100, messages=log, metadata={"n": len(log)})
                peaks[size] = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            assert encoded == [log[-1], {"n": len(log)}]  # only the new message and the metadata were encoded
        # re-encoding, decoding or deep-copying the log would allocate >= 1 KB a message (2 MB here); what
        # remains is a few tuples of pointers (8 bytes a message)
        assert peaks[2000] - peaks[20] < 2000 * 100, peaks
        assert list(store.get("long").messages) == log and list(store.backend.get("long").messages) == log

    def test_history_rewrites_take_the_full_path_and_stay_exact(self, store):
        log = [_turn(i) for i in range(30)]
        rec = store.commit(store.get_or_create("h"), state=b"a", messages=log, metadata={})
        rewrites = [
            log[:-1],  # the last reply rolled back
            [*log[:-1], {"role": "assistant", "content": "another reply"}],  # ... and replaced
            [{**log[0], "content": "edited"}, *log[1:]],  # an old message edited (a copy)
            [],  # cleared
            log,  # everything again
            [*log[:10], *log[11:]],  # one message removed in the middle
        ]
        for new in rewrites:
            rec = store.commit(rec, state=bytes([len(new)]), messages=new, metadata={"n": len(new)})
            assert list(rec.messages) == new and rec.metadata == {"n": len(new)}
            assert list(store.get("h").messages) == new and list(store.backend.get("h").messages) == new
        # the returned record holds the caller's dicts for the stored part; editing one in place and committing
        # is seen, because the cache compares against its own copy
        rec.messages[3]["content"] = "edited in place"
        new = [*rec.messages, _turn(99)]
        rec = store.commit(rec, state=b"b", messages=new, metadata={})
        assert list(store.get("h").messages) == new and list(store.backend.get("h").messages) == new
        assert store.backend.get("h").messages[3]["content"] == "edited in place"

    def test_delete_removes_everything(self, backend):
        backend.create("gone", {"m": 1})
        backend.commit("gone", state=STATE, messages=MESSAGES, metadata=METADATA, expected_version=0)
        backend.create("kept")
        backend.commit("kept", state=STATE, messages=MESSAGES[:1], metadata={}, expected_version=0)
        assert backend.delete("gone") is True
        assert backend.get("gone") is None and backend.list() == ["kept"]
        assert backend.delete("gone") is False
        assert backend.create("gone").version == 0  # id reusable, fresh
        rows = self.message_rows(backend)
        assert rows is None or rows == [("kept", 0)]  # no message row of the deleted session is left
        assert list(backend.get("kept").messages) == MESSAGES[:1]

    def test_stamp_and_cached_copies_of_another_writer(self, make_backend):
        a, b = SessionStore(make_backend()), SessionStore(make_backend())
        rec = a.get_or_create("s")
        assert a.backend.stamp("s") == (0, rec.created_at) and a.backend.stamp("nope") is None
        assert a.is_current("s", 0)
        other = b.commit(b.get("s"), state=b"b", messages=[{"by": "b"}], metadata={})
        assert b.backend.stamp("s") == (1, rec.created_at)
        if a.backend.shared:  # a cached copy another process committed over is never used
            assert not a.is_current("s", 0) and a.get("s") == other
            assert b.delete("s") and a.get("s") is None
            again = b.commit(b.get_or_create("s"), state=b"new", messages=[], metadata={})
            assert again.version == 1 and a.get("s") == again  # re-created at the same version: still seen
        else:  # one process: the cache is this store's; invalidate() when someone else writes
            assert a.is_current("s", 0) and a.get("s") == rec
        a.close()
        b.close()

    def test_persistence_across_restart(self, make_backend):
        with SessionStore(make_backend()) as store:
            rec = store.commit(store.get_or_create("thread:42", {"k": "v"}), state=STATE, messages=MESSAGES,
                               metadata=METADATA)
            store.fork("thread:42", "thread:43")
        with SessionStore(make_backend()) as store2:
            assert store2.get("thread:42") == rec
            assert store2.list("thread:") == ["thread:42", "thread:43"]
            assert store2.commit(rec, state=b"x", messages=[], metadata={}).version == 2

    @pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b)[:20] for b in BAD_IDS])
    def test_invalid_ids_rejected_everywhere(self, backend, tmp_path, bad):
        store = SessionStore(backend)
        good = store.get_or_create("good")
        store.export_session("good", tmp_path / "g.json")
        calls = [
            lambda: validate_session_id(bad), lambda: backend.get(bad), lambda: backend.create(bad),
            lambda: backend.commit(bad, state=None, messages=[], metadata={}, expected_version=0),
            lambda: backend.delete(bad), lambda: backend.copy("good", bad), lambda: backend.copy(bad, "x"),
            lambda: store.get(bad), lambda: store.get_or_create(bad), lambda: store.delete(bad),
            lambda: store.commit(bad, state=None, messages=[], metadata={}, expected_version=0),
            lambda: store.fork("good", bad), lambda: store.fork(bad, "x"), lambda: store.snapshot(bad),
            lambda: store.restore(bad, good), lambda: store.export_session(bad, tmp_path / "x.json"),
            lambda: store.lock(bad).__enter__(),
        ]
        if bad is not None:  # None means "default" for these two
            calls += [lambda: store.import_session(tmp_path / "g.json", bad), lambda: store.invalidate(bad)]
        for call in calls:
            with pytest.raises(InvalidSessionIdError, match="session ids must be"):
                call()
        assert store.list() == ["good"] and SessionStore(backend, cache_size=0).get("good") == good

    _CHILD = """
import sys
from deltamem_agents.runtime.store_url import open_backend
b = open_backend(sys.argv[1])
rec = b.get("shared")
b.commit("shared", state=b"from-child", messages=[*rec.messages, {"role": "child", "content": "hi"}],
         metadata={"by": "child"}, expected_version=rec.version)
b.close()
"""

    def test_commit_from_second_process_is_visible(self, backend, store_url):
        store = SessionStore(backend)
        rec = store.commit(store.get_or_create("shared"), state=b"parent", messages=MESSAGES[:1], metadata={})
        proc = subprocess.run([sys.executable, "-c", self._CHILD, store_url], env=child_env(), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        fresh = store.backend.get("shared")
        assert (fresh.version, fresh.state, fresh.metadata) == (2, b"from-child", {"by": "child"})
        assert fresh.messages[-1] == {"role": "child", "content": "hi"}
        with pytest.raises(ConcurrentWriteError):  # the stale cached record cannot overwrite the child's turn
            store.commit(rec, state=b"stale", messages=[], metadata={})
        assert store.get("shared") == fresh  # the conflict evicted the stale cache entry

    @pytest.mark.parametrize("other_length", [2, 3])
    def test_append_falls_back_to_a_full_commit_when_the_session_was_recreated(self, make_backend, other_length):
        a = SessionStore(make_backend())
        b = SessionStore(make_backend())
        rec = a.commit(a.get_or_create("s"), state=b"a", messages=[_turn(0), _turn(1)], metadata={})
        # another process deletes and re-creates the session up to the same version (other created_at)
        assert b.delete("s")
        other = [{"role": "user", "content": f"b{i}"} for i in range(other_length)]
        assert b.commit(b.get_or_create("s"), state=b"b", messages=other, metadata={}).version == rec.version
        out = a.commit(rec, state=b"a2", messages=[*rec.messages, _turn(2)], metadata={"by": "a"})
        # the same outcome as the full path always had: the version matched, so a's whole log is committed
        stored = b.backend.get("s")
        assert stored == out and list(stored.messages) == [_turn(0), _turn(1), _turn(2)] and stored.version == 2
        # and a stale cached version still raises, writes nothing and evicts the entry
        b.commit(stored, state=b"b2", messages=[*stored.messages, _turn(3)], metadata={"by": "b"})
        with pytest.raises(ConcurrentWriteError):
            a.commit(out, state=b"a3", messages=[*out.messages, _turn(4)], metadata={"by": "a"})
        assert a.get("s") == b.backend.get("s") and a.get("s").metadata == {"by": "b"}
        a.close()
        b.close()

    def test_backend_append_validates_and_checks_the_base(self, backend):
        backend.create("s")
        rec = backend.commit("s", state=None, messages=MESSAGES, metadata={}, expected_version=0)
        base = {"state": b"x", "metadata": {"m": 1}, "expected_version": 1, "base_length": 3}
        with pytest.raises(InvalidSessionDataError, match=r"messages\[4\]"):  # numbered in the whole log
            backend.append("s", messages=[{"ok": 1}, {"bad": float("nan")}], **base)
        with pytest.raises(InvalidSessionDataError, match="base_length"):
            backend.append("s", messages=[], **{**base, "base_length": -1})
        with pytest.raises(ConcurrentWriteError):
            backend.append("s", messages=[{"a": 1}], **{**base, "expected_version": 0})
        with pytest.raises(SessionNotFoundError):
            backend.append("missing", messages=[{"a": 1}], **base)
        assert backend.append("s", messages=[{"a": 1}], **{**base, "base_length": 2}) is None  # wrong length
        assert backend.append("s", messages=[{"a": 1}], **base, created_at=rec.created_at + 1) is None  # re-created
        assert backend.get("s") == rec  # nothing written by any of the above
        out = backend.append("s", messages=[{"a": (1, 2)}], **base, created_at=rec.created_at)
        assert (out.version, out.messages, out.metadata, out.state, out.created_at) == (
            2, ({"a": [1, 2]},), {"m": 1}, b"x", rec.created_at)
        got = backend.get("s")
        assert list(got.messages) == [*MESSAGES, {"a": [1, 2]}] and got.version == 2
        assert got.updated_at == out.updated_at

    def test_many_append_turns_round_trip_across_restarts(self, make_backend):
        log, expected = [], None
        for run in range(3):  # three "processes": a new backend and store on the same storage each time
            with SessionStore(make_backend()) as store:
                full_commits: list = []
                real_commit = store.backend.commit
                store.backend.commit = lambda *a, **kw: full_commits.append(1) or real_commit(*a, **kw)
                rec = store.get_or_create("long")
                assert rec == expected if expected else rec.version == 0
                for turn in range(250):
                    i = len(log)
                    log.append({"role": "user", "content": f"turn {i} \u2603"})
                    if turn % 10 == 9:  # a reply with a tool call now and then: two messages in one turn
                        log.append({"role": "assistant", "content": "",
                                    "tool_calls": [{"name": "f", "args": {"i": i}}]})
                    rec = store.commit(rec, state=f"state {i};".encode() * 40, messages=log,
                                       metadata={"turn": i, "run": run})
                assert not full_commits  # every turn took the append path
                expected = rec
        assert expected.version == 750 and list(expected.messages) == log and len(log) == 825
        with SessionStore(make_backend()) as store:
            assert store.get("long") == expected
            store.fork("long", "copy")
            assert list(store.get("copy").messages) == log
            rows = self.message_rows(store.backend)
        if rows is not None:
            assert [i for s, i in rows if s == "long"] == list(range(len(log)))

    # one method run by each backend's subclass (differing executors by design); the storage is shared by
    # all examples, each of which uses a fresh session id
    @settings(max_examples=30, deadline=None, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(ops=_OPS)
    def test_property_mixed_appends_and_rewrites_match_a_fresh_read(self, make_backend, ops):
        backend = make_backend()
        store = SessionStore(backend, cache_size=2)
        sid = f"p-{uuid.uuid4().hex}"  # one storage for all examples: a fresh session each
        rec, log = store.get_or_create(sid), []
        for step, (op, k) in enumerate(ops):
            if op == "append":
                log = [*log, *(_turn(step * 10 + j) for j in range(k))]
            elif op == "truncate":
                log = log[:max(0, len(log) - k)]
            elif op == "edit" and log:
                log = [*log[:k % len(log)], {"role": "edited", "content": str(step)}, *log[k % len(log) + 1:]]
            elif op == "edit-in-place" and log:
                log[k % len(log)]["content"] = f"in place {step}"
            elif op == "read":
                rec = store.get(sid)
                log = [dict(m) for m in rec.messages]
                continue
            rec = store.commit(rec, state=str(step).encode(), messages=log, metadata={"step": step})
            assert list(rec.messages) == log
        fresh = make_backend()
        assert list(fresh.get(sid).messages) == log and fresh.get(sid).version == rec.version
        assert store.get(sid) == fresh.get(sid)
        store.close()
        fresh.close()
