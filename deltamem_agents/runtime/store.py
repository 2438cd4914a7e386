"""Session persistence: :class:`SessionStore`, an LRU cache in front of a :class:`SessionBackend`.

Usage::

    store = SessionStore(SQLiteBackend("~/.cache/deltamem-agents/sessions.db"))
    with store.lock("user-1"):                       # one turn at a time per session
        rec = store.get_or_create("user-1")
        rec = store.commit(rec, state=blob, messages=[*rec.messages, reply], metadata=rec.metadata)

Writes go through to the backend first; the cache is updated only after the backend commit
succeeded, under an internal per-session (striped) lock, so inside one process the cache never
goes back to an older version.  Writers in *other* processes are caught by optimistic concurrency:
a commit based on a stale record raises :class:`ConcurrentWriteError` and evicts the entry.  Use
``cache_size=0`` (or :meth:`SessionStore.invalidate`) when other processes write and reads must be
fresh, except on a backend that says it is ``shared`` (Postgres): there a cached record is re-checked
with one cheap read of its (version, created_at) before it is used, and :meth:`SessionStore.lock` also
holds across processes.  Records handed out never share objects with the cache, so mutating them never
changes it.  Export files are plain JSON (never pickle) with SHA-256 checksums verified on import.

Append-only commits: a turn usually commits the previous log plus a few messages.  When the cached
record is at ``expected_version`` and the new log starts with its messages (one C-speed ``==`` over
the log, ~50 ns a message), only the new messages are validated, encoded and written
(:meth:`SessionBackend.append`); nothing is read back.  Any other log (history rewritten, e.g. a
restore to an older snapshot, or no cached copy) takes the full path, :meth:`SessionBackend.commit`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, Hashable, Iterator, Mapping, Sequence, TypeVar

from ..errors import (ConcurrentWriteError, CorruptSessionError, DeltaMemError, InvalidSessionDataError,
                      SessionBusyError, SessionExistsError, SessionNotFoundError)
from .store_base import RawSession, SessionBackend, SessionRecord, check_json_value, validate_session_id
from .store_memory import MemoryBackend
from .store_sqlite import SQLiteBackend

__all__ = [
    "SessionStore", "SessionRecord", "SessionBackend", "SQLiteBackend", "MemoryBackend", "RawSession",
    "LRUCache", "validate_session_id", "parse_export", "EXPORT_FORMAT", "EXPORT_FORMAT_VERSION",
]

EXPORT_FORMAT = "deltamem-session"
EXPORT_FORMAT_VERSION = 1
_STRIPES = 64
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class LRUCache(Generic[_K, _V]):
    """A thread-safe least-recently-used map of at most ``capacity`` entries (0 keeps nothing).

    The runtime's one LRU: `SessionStore` keeps its records in one, and
    :class:`~deltamem_agents.runtime.sessions.LiveSessions` its live conversations.
    ``get`` counts a hit or a miss and marks the entry as most recently used; ``peek`` does neither.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self.hits = self.misses = 0
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return value

    def peek(self, key: _K) -> _V | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: _K, value: _V) -> None:
        """Insert or replace ``key`` as the most recently used entry, evicting the oldest ones."""
        if not self.capacity:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def pop(self, key: _K) -> _V | None:
        with self._lock:
            return self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def info(self) -> dict[str, int]:
        """``{"size", "capacity", "hits", "misses"}``."""
        with self._lock:
            return {"size": len(self._data), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __getitem__(self, key: _K) -> _V:
        with self._lock:
            return self._data[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


def _clone(rec: SessionRecord) -> SessionRecord:
    """A deep copy of a (JSON-normalised) record; the JSON codec is C-accelerated."""
    messages, metadata = json.loads(json.dumps([list(rec.messages), rec.metadata]))
    return SessionRecord(rec.session_id, rec.state, tuple(messages), metadata, rec.version,
                         rec.created_at, rec.updated_at)


def _stored_prefix(messages: Any, stored: tuple[dict, ...]) -> tuple[Any, ...] | None:
    """``messages[:len(stored)]`` as a tuple if ``messages`` is a list/tuple starting with ``stored``
    (compared with ``==``, at C speed), else None."""
    if not isinstance(messages, (list, tuple)) or len(messages) < len(stored):
        return None
    prefix = tuple(messages[:len(stored)])
    return prefix if prefix == stored else None


def _payload_digest(session_id: str, messages: Sequence[Any], metadata: Any) -> str:
    canonical = json.dumps({"session_id": session_id, "messages": list(messages), "metadata": metadata},
                           sort_keys=True, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_export(data: bytes, source: str = "<export>") -> tuple[str, bytes | None, list, dict]:
    """Validate an export file's bytes; return (session_id, state, messages, metadata).

    Raises :class:`CorruptSessionError` for anything that is not an intact format-1 export.
    """
    def bad(why: str) -> CorruptSessionError:
        return CorruptSessionError(f"{source}: not a valid deltamem session export: {why}")

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"undecodable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise bad("the top level is not a JSON object")
    if doc.get("format") != EXPORT_FORMAT:
        raise bad(f"format is {doc.get('format')!r}, expected {EXPORT_FORMAT!r}")
    fv = doc.get("format_version")
    if isinstance(fv, bool) or fv != EXPORT_FORMAT_VERSION:
        raise bad(f"unsupported format_version {fv!r} (this version reads {EXPORT_FORMAT_VERSION})")
    sid, messages, metadata = doc.get("session_id"), doc.get("messages"), doc.get("metadata")
    b64, sha = doc.get("state_b64"), doc.get("state_sha256")
    if not isinstance(metadata, dict):
        raise bad("'metadata' must be a JSON object")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise bad("'messages' must be a list of JSON objects")
    try:
        validate_session_id(sid)
        check_json_value(messages, "messages")
        check_json_value(metadata, "metadata")
    except DeltaMemError as exc:
        raise bad(str(exc)) from exc
    if not (isinstance(b64, str) and isinstance(sha, str) or b64 is None and sha is None):
        raise bad("'state_b64' and 'state_sha256' must both be strings, or both null")
    state = None
    if b64 is not None:
        try:
            state = base64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise bad(f"'state_b64' is not valid base64 ({exc})") from exc
        if hashlib.sha256(state).hexdigest() != sha.lower():
            raise bad("state checksum mismatch (state_sha256 does not match the decoded state)")
    digest = doc.get("payload_sha256")  # optional: covers session_id, messages and metadata
    if digest is not None and (not isinstance(digest, str)
                               or digest.lower() != _payload_digest(sid, messages, metadata)):
        raise bad("payload checksum mismatch (messages, metadata or session_id were altered)")
    return sid, state, messages, metadata


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a fsynced temp file renamed into place (a crash leaves the old file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SessionStore:
    """In-memory LRU cache (``cache_size`` records; 0 disables it) in front of a backend."""

    def __init__(self, backend: SessionBackend, *, cache_size: int = 64) -> None:
        if not isinstance(backend, SessionBackend):
            raise TypeError(f"backend must be a SessionBackend, not {type(backend).__name__}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.backend, self.cache_size = backend, cache_size
        self._cache: LRUCache[str, SessionRecord] = LRUCache(cache_size)
        self._stripes = tuple(threading.RLock() for _ in range(_STRIPES))
        self._turn_locks: dict[str, list] = {}  # id -> [RLock, users]; dropped when unused
        self._turn_guard = threading.Lock()

    # -- cache and internal locking ---------------------------------------------------------
    @contextmanager
    def _locked(self, *session_ids: str) -> Iterator[None]:
        with ExitStack() as stack:  # sorted stripes: two ids never deadlock
            for i in sorted({hash(s) % _STRIPES for s in session_ids}):
                stack.enter_context(self._stripes[i])
            yield

    def _cached(self, sid: str) -> SessionRecord | None:
        return self._cache.get(sid)

    def _peek(self, sid: str) -> SessionRecord | None:
        """The cached record (shared, never handed out) without counting a hit or a miss."""
        return self._cache.peek(sid)

    def _cache_put(self, rec: SessionRecord) -> None:
        self._cache.put(rec.session_id, rec)

    def _remember(self, rec: SessionRecord) -> SessionRecord:
        self._cache_put(rec)
        return _clone(rec)

    def invalidate(self, session_id: str | None = None) -> None:
        """Drop one session (or everything) from the cache; the next read goes to the backend."""
        if session_id is None:
            self._cache.clear()
        else:
            self._cache.pop(validate_session_id(session_id))

    def cache_info(self) -> dict[str, int]:
        """``{"size", "capacity", "hits", "misses"}`` of the LRU cache."""
        return self._cache.info()

    # -- reads ------------------------------------------------------------------------------
    def _current(self, sid: str, rec: SessionRecord) -> bool:
        """Whether a cached record is still what the backend holds (always, unless the backend is shared)."""
        return not self.backend.shared or self.backend.stamp(sid) == (rec.version, rec.created_at)

    def is_current(self, session_id: str, version: int) -> bool:
        """Whether ``version`` of the session, as this store last read or committed it, is still the stored
        one: always true unless the backend is shared with other processes; then one cheap backend read
        (false also when the cached copy is gone, so the caller reloads)."""
        sid = validate_session_id(session_id)
        if not self.backend.shared:
            return True
        rec = self._peek(sid)
        return rec is not None and rec.version == version and self._current(sid, rec)

    def get(self, session_id: str) -> SessionRecord | None:
        """The session (a private copy), or None.  From a shared backend the cached copy is used only while
        it is still the stored version."""
        sid = validate_session_id(session_id)
        rec = self._cached(sid)
        if rec is not None and self._current(sid, rec):
            return _clone(rec)
        with self._locked(sid):  # no in-process write can interleave with this read + cache fill
            rec = self.backend.get(sid)
            return None if rec is None else self._remember(rec)

    def get_or_create(self, session_id: str, metadata: Mapping[str, Any] | None = None) -> SessionRecord:
        """The session, created empty (version 0, given metadata) if it does not exist yet."""
        sid = validate_session_id(session_id)
        with self._locked(sid):
            rec = self.get(sid)
            if rec is not None:
                return rec
            try:
                return self._remember(self.backend.create(sid, metadata))
            except SessionExistsError:  # another process created it just now
                return self._remember(self.backend.get(sid) or self.backend.create(sid, metadata))

    def list(self, prefix: str | None = None) -> list[str]:
        """Sorted session ids, optionally only those starting with ``prefix``."""
        return self.backend.list(prefix)

    def snapshot(self, session_id: str) -> SessionRecord:
        """An immutable, independent copy of the session now (SessionNotFoundError if missing)."""
        rec = self.get(session_id)
        if rec is None:
            raise SessionNotFoundError(f"no session with id {session_id!r}")
        return rec

    # -- writes -----------------------------------------------------------------------------
    def commit(self, record_or_id: SessionRecord | str, *, state: bytes | None,
               messages: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any] | None,
               expected_version: int | None = None) -> SessionRecord:
        """Write-through commit of a whole turn; ``expected_version`` defaults to the record's version.

        ``messages`` is the whole log.  If it extends the cached log (see the module docstring), only
        the new messages are encoded and written, and the returned record holds the dicts you passed
        for the already-stored part (they compare equal to it) plus fresh copies of the new ones;
        otherwise the whole log is committed and the record is a fresh copy.  ConcurrentWriteError
        (stale version) and SessionNotFoundError evict the cached entry.
        """
        is_record = isinstance(record_or_id, SessionRecord)
        sid = validate_session_id(record_or_id.session_id if is_record else record_or_id)
        if expected_version is None:
            if not is_record:
                raise InvalidSessionDataError(
                    "expected_version is required when committing by id (pass the version you read)")
            expected_version = record_or_id.version
        with self._locked(sid):
            try:
                appended = self._commit_append(sid, state, messages, metadata, expected_version)
                if appended is not None:
                    return appended
                rec = self.backend.commit(sid, state=state, messages=messages, metadata=metadata,
                                          expected_version=expected_version)
            except (ConcurrentWriteError, SessionNotFoundError):
                self.invalidate(sid)
                raise
            return self._remember(rec)

    def _commit_append(self, sid: str, state: bytes | None, messages: Sequence[Mapping[str, Any]],
                       metadata: Mapping[str, Any] | None, expected_version: int) -> SessionRecord | None:
        """The append-only commit (caller holds the session's stripe lock), or None if it does not apply
        (no cached record at ``expected_version``, a log that does not extend it, or a stored log that
        is not the cached one); then nothing was written."""
        cached = self._peek(sid)
        if cached is None or cached.version != expected_version:
            return None
        prefix = _stored_prefix(messages, cached.messages)
        if prefix is None:
            return None
        res = self.backend.append(sid, state=state, messages=messages[len(prefix):], metadata=metadata,
                                  expected_version=expected_version, base_length=len(prefix),
                                  created_at=cached.created_at)
        if res is None:
            return None
        self._cache_put(SessionRecord(sid, res.state, cached.messages + res.messages, res.metadata,
                                      res.version, res.created_at, res.updated_at))
        new_messages, new_metadata = json.loads(json.dumps([list(res.messages), res.metadata]))
        return SessionRecord(sid, res.state, prefix + tuple(new_messages), new_metadata, res.version,
                             res.created_at, res.updated_at)

    def delete(self, session_id: str) -> bool:
        """Forget the session everywhere (backend and cache).  True if it existed."""
        sid = validate_session_id(session_id)
        with self._locked(sid):
            try:
                return self.backend.delete(sid)
            finally:
                self.invalidate(sid)

    def fork(self, src_id: str, dst_id: str) -> SessionRecord:
        """Copy a session to a new id (version 0); the two then evolve independently."""
        src, dst = validate_session_id(src_id), validate_session_id(dst_id)
        with self._locked(src, dst):
            return self._remember(self.backend.copy(src, dst))

    def restore(self, session_id: str, snapshot: SessionRecord, *,
                expected_version: int | None = None) -> SessionRecord:
        """Commit a snapshot's state, messages and metadata as a new version (creating the session
        if it was deleted).  Without ``expected_version`` it overrides whatever version is current."""
        if not isinstance(snapshot, SessionRecord):
            raise InvalidSessionDataError(f"snapshot must be a SessionRecord, not {type(snapshot).__name__}")
        sid = validate_session_id(session_id)
        with self._locked(sid):
            current = self.get_or_create(sid, snapshot.metadata)
            return self.commit(sid, state=snapshot.state, messages=snapshot.messages,
                               metadata=snapshot.metadata,
                               expected_version=current.version if expected_version is None
                               else expected_version)

    # -- export / import --------------------------------------------------------------------
    def export_session(self, session_id: str, path: str | os.PathLike) -> Path:
        """Write the session to a JSON file (atomically, mode 0600); returns the path."""
        rec = self.snapshot(session_id)
        state = rec.state
        doc = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION,
               "session_id": rec.session_id, "metadata": rec.metadata, "messages": list(rec.messages),
               "state_b64": None if state is None else base64.b64encode(state).decode("ascii"),
               "state_sha256": None if state is None else hashlib.sha256(state).hexdigest(),
               "payload_sha256": _payload_digest(rec.session_id, rec.messages, rec.metadata),
               "exported_at": datetime.now(timezone.utc).isoformat()}
        data = json.dumps(doc, ensure_ascii=True, allow_nan=False, indent=1).encode("ascii")
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return target

    def import_session(self, path: str | os.PathLike, session_id: str | None = None, *,
                       overwrite: bool = False) -> SessionRecord:
        """Load an export file (under its own id, or ``session_id``).  The file is fully validated
        first (CorruptSessionError), so a bad file never touches an existing session; an existing
        target raises SessionExistsError unless ``overwrite`` (then it is replaced as a new version)."""
        source = Path(path).expanduser()
        file_sid, state, messages, metadata = parse_export(source.read_bytes(), str(source))
        sid = file_sid if session_id is None else validate_session_id(session_id)
        with self._locked(sid):
            current = self.backend.get(sid)
            if current is not None and not overwrite:
                raise SessionExistsError(
                    f"a session with id {sid!r} already exists; pass overwrite=True or another session_id")
            if current is None:
                current = self.backend.create(sid, metadata)
            return self.commit(sid, state=state, messages=messages, metadata=metadata,
                               expected_version=current.version)

    # -- per-session turn lock --------------------------------------------------------------
    @contextmanager
    def lock(self, session_id: str, *, timeout: float | None = None) -> Iterator[None]:
        """Serialise turns on one session (re-entrant).  Raises SessionBusyError if ``timeout`` seconds
        pass first.  Inside this process a lock per session; when the backend has a cross-process lock
        (:meth:`SessionBackend.session_lock`, e.g. Postgres) the outermost holder also takes that one.
        Otherwise other processes are kept out by ``expected_version`` (ConcurrentWriteError)."""
        sid = validate_session_id(session_id)
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._turn_guard:
            entry = self._turn_locks.setdefault(sid, [threading.RLock(), 0, 0])  # lock, users, holder's depth
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=-1 if timeout is None else timeout):
                raise SessionBusyError(f"session {sid!r} is busy (lock not acquired in {timeout} s)")
            try:
                entry[2] += 1  # only the holding thread touches the depth
                with ExitStack() as outer:
                    if entry[2] == 1:
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        outer.enter_context(self.backend.session_lock(sid, timeout=left))
                    yield
            finally:
                entry[2] -= 1
                entry[0].release()
        finally:
            with self._turn_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._turn_locks[sid]

    def close(self) -> None:
        """Clear the cache and close the backend."""
        self.invalidate()
        self.backend.close()

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
