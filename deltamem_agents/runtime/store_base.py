"""Session records, id/payload validation and the abstract :class:`SessionBackend` interface.

A *session* is one conversation: an opaque state blob (``bytes``, e.g. safetensors of the
memory state), a message log (list of JSON-safe dicts) and metadata (a JSON-safe dict),
plus a ``version`` that increments on every commit (optimistic concurrency).

:class:`SessionBackend` uses the template-method pattern: its public methods validate the
session id and payload, JSON-encode messages/metadata *before* anything is written, and
decode what the backend returns.  A concrete backend (SQLite, memory, later Redis or
Postgres) implements only the ``_get/_create/_commit/_list/_delete/_copy`` primitives,
which receive already-validated ids and already-encoded JSON strings (:class:`RawSession`).

``append`` is the per-turn fast path: it encodes and stores only the messages a turn adds, so its
cost does not grow with the log.  Its primitive ``_append`` has a correct default (read the session,
then ``_commit`` the whole log); a backend overrides it to write only the new messages.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import (
    ConcurrentWriteError,
    CorruptSessionError,
    InvalidSessionDataError,
    InvalidSessionIdError,
    SessionExistsError,
    SessionNotFoundError,
)

__all__ = [
    "MAX_SESSION_ID_LENGTH", "SessionRecord", "RawSession", "EncodedPayload", "SessionBackend",
    "validate_session_id", "check_json_value", "dumps_json", "encode_payload", "encode_state", "encode_messages",
    "encode_metadata", "decode_json", "decode_raw", "not_found", "exists", "conflict",
]

MAX_SESSION_ID_LENGTH = 128
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")
_ID_RULE = (
    "session ids must be a str of 1-128 characters: an ASCII letter or digit, followed by ASCII "
    "letters, digits or any of . _ : @ + = - (no slashes, whitespace, quotes, semicolons or "
    "control characters), e.g. a UUID, 'user-1' or 'thread:42'"
)
_MAX_JSON_DEPTH = 100


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a valid session id, else raise :class:`InvalidSessionIdError`."""
    if not isinstance(session_id, str):
        raise InvalidSessionIdError(f"invalid session id of type {type(session_id).__name__}: {_ID_RULE}")
    if _SESSION_ID_RE.fullmatch(session_id) is None:
        shown = repr(session_id if len(session_id) <= 40 else session_id[:40] + "...")
        raise InvalidSessionIdError(f"invalid session id {shown} (length {len(session_id)}): {_ID_RULE}")
    return session_id


@dataclass(frozen=True)
class SessionRecord:
    """One session as read from (or just committed to) a store.

    ``version`` is 0 for a created-but-never-committed session and increments by one on every
    commit.  ``messages``/``metadata`` are fresh, plain JSON objects owned by the caller.
    """

    session_id: str
    state: bytes | None
    messages: tuple[dict, ...]
    metadata: dict
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RawSession:
    """What a backend stores: each message and the metadata as a JSON text."""

    session_id: str
    state: bytes | None
    messages: tuple[str, ...]
    metadata: str
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class EncodedPayload:
    """A validated commit payload: state bytes, one JSON text per message, metadata JSON."""

    state: bytes | None
    messages: tuple[str, ...] = field(default=())
    metadata: str = "{}"


_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def dumps_json(value: Any) -> str:
    """Deterministic, strict JSON text (ASCII-only so any string, even a lone surrogate, stores safely)."""
    return _ENCODER.encode(value)


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Raise :class:`InvalidSessionDataError` unless ``value`` survives a JSON round trip unchanged in kind.

    Allowed: None, bool, int, finite float, str, list/tuple, dict with str keys (nested).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSessionDataError(f"{where}: {value!r} is not valid JSON (NaN/Infinity are not allowed)")
        return
    if depth >= _MAX_JSON_DEPTH:
        raise InvalidSessionDataError(
            f"{where}: nested deeper than {_MAX_JSON_DEPTH} levels (circular reference?)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidSessionDataError(
                    f"{where}: dict key {key!r} is a {type(key).__name__}; JSON object keys must be str")
            check_json_value(item, f"{where}[{key[:40]!r}]", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    raise InvalidSessionDataError(
        f"{where}: a {type(value).__name__} is not JSON-serialisable; allowed are None, bool, int, "
        "finite float, str, list and dict with str keys")


def encode_payload(state: Any, messages: Any, metadata: Any, start: int = 0) -> EncodedPayload:
    """Validate and encode a commit payload.  Raises :class:`InvalidSessionDataError`; writes nothing.

    ``start`` is the index of ``messages[0]`` in the whole log (see :func:`encode_messages`).
    """
    return EncodedPayload(encode_state(state), encode_messages(messages, start), encode_metadata(metadata))


def encode_state(state: Any) -> bytes | None:
    """Validate the state blob (bytes-like or None) and return it as ``bytes`` (or None)."""
    if state is None:
        return None
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise InvalidSessionDataError(
            f"state must be bytes or None (serialise tensors first), not {type(state).__name__}")
    return bytes(state)


def encode_messages(messages: Any, start: int = 0) -> tuple[str, ...]:
    """Validate a message log (list/tuple of JSON-safe dicts) and return one JSON text per message.

    ``start`` is the index of ``messages[0]`` in the whole log (it only numbers the error messages).
    """
    if not isinstance(messages, (list, tuple)):
        raise InvalidSessionDataError(
            f"messages must be a list of dicts, not {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages, start):
        if not isinstance(message, Mapping):
            raise InvalidSessionDataError(
                f"messages[{i}] must be a dict (e.g. {{'role': ..., 'content': ...}}), "
                f"not {type(message).__name__}")
        message = dict(message)
        check_json_value(message, f"messages[{i}]")
        out.append(dumps_json(message))
    return tuple(out)


def encode_metadata(metadata: Any) -> str:
    """Validate metadata (a JSON-safe dict; None means ``{}``) and return its JSON text."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidSessionDataError(f"metadata must be a dict, not {type(metadata).__name__}")
    metadata = dict(metadata)
    check_json_value(metadata, "metadata")
    return dumps_json(metadata)


def not_found(session_id: str) -> SessionNotFoundError:
    """The error for a missing session (shared by the backends)."""
    return SessionNotFoundError(f"no session with id {session_id!r}")


def exists(session_id: str) -> SessionExistsError:
    """The error for an id that is already taken (shared by the backends)."""
    return SessionExistsError(f"a session with id {session_id!r} already exists")


def conflict(session_id: str, expected: int, actual: int) -> ConcurrentWriteError:
    """The error for a stale ``expected_version`` (shared by the backends)."""
    return ConcurrentWriteError(
        f"session {session_id!r} is at version {actual}, not the expected {expected}: another writer "
        "committed first; re-read the session and retry", session_id=session_id,
        expected_version=expected, actual_version=actual)


def _check_version(expected_version: Any) -> int:
    if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0:
        raise InvalidSessionDataError(
            f"expected_version must be a non-negative int (the version you read), got {expected_version!r}")
    return expected_version


def _check_base_length(base_length: Any) -> int:
    if isinstance(base_length, bool) or not isinstance(base_length, int) or base_length < 0:
        raise InvalidSessionDataError(
            f"base_length must be a non-negative int (the stored log's length), got {base_length!r}")
    return base_length


def decode_json(session_id: str, messages: Sequence[str], metadata: str) -> tuple[tuple[dict, ...], dict]:
    """Decode stored message and metadata JSON texts (CorruptSessionError if undecodable or not objects)."""
    try:
        decoded = tuple(json.loads(m) for m in messages)
        meta = json.loads(metadata)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptSessionError(f"session {session_id!r}: stored JSON is undecodable: {exc}") from exc
    if not isinstance(meta, dict) or not all(isinstance(m, dict) for m in decoded):
        raise CorruptSessionError(f"session {session_id!r}: stored messages/metadata are not JSON objects")
    return decoded, meta


def decode_raw(raw: RawSession) -> SessionRecord:
    """Turn stored JSON texts back into a :class:`SessionRecord` (CorruptSessionError if undecodable)."""
    messages, metadata = decode_json(raw.session_id, raw.messages, raw.metadata)
    state = None if raw.state is None else bytes(raw.state)
    return SessionRecord(raw.session_id, state, messages, metadata, int(raw.version),
                         float(raw.created_at), float(raw.updated_at))


class SessionBackend(ABC):
    """Persistence interface for sessions; implement the six ``_`` primitives to add a backend.

    Every public method validates ids (``InvalidSessionIdError``) and payloads
    (``InvalidSessionDataError``) before touching storage.  ``commit`` is one atomic
    transaction guarded by ``expected_version`` (``ConcurrentWriteError`` when stale), so two
    writers can never interleave into a torn record.
    """

    #: True for a store other processes write while this one runs (e.g. Postgres behind several servers):
    #: then :meth:`session_lock` holds across processes and cached copies are checked against :meth:`stamp`.
    shared: bool = False

    # -- public API ---------------------------------------------------------------------
    def get(self, session_id: str) -> SessionRecord | None:
        """The session, or None if it does not exist."""
        raw = self._get(validate_session_id(session_id))
        return None if raw is None else decode_raw(raw)

    def create(self, session_id: str, metadata: Mapping[str, Any] | None = None) -> SessionRecord:
        """Create an empty session (no state, no messages, version 0); SessionExistsError if present."""
        sid = validate_session_id(session_id)
        return decode_raw(self._create(sid, encode_metadata(metadata)))

    def commit(self, session_id: str, *, state: bytes | None, messages: Sequence[Mapping[str, Any]],
               metadata: Mapping[str, Any] | None, expected_version: int) -> SessionRecord:
        """Atomically replace state, the full message log and metadata; the version becomes +1.

        Raises SessionNotFoundError if the session is missing and ConcurrentWriteError if the
        stored version is not ``expected_version`` (nothing is written in either case).
        """
        sid = validate_session_id(session_id)
        version = _check_version(expected_version)
        payload = encode_payload(state, messages, metadata)
        return decode_raw(self._commit(sid, payload, version))

    def append(self, session_id: str, *, state: bytes | None, messages: Sequence[Mapping[str, Any]],
               metadata: Mapping[str, Any] | None, expected_version: int, base_length: int,
               created_at: float | None = None) -> SessionRecord | None:
        """Atomically append ``messages`` to the stored log and replace state and metadata (version +1).

        ``base_length`` is the length of the log at ``expected_version`` as the caller read it, and
        ``created_at`` (optional) the session's creation time as read; only the new messages are encoded
        and written.  Returns None (and writes nothing) if the stored log does not have ``base_length``
        messages or the session has another ``created_at`` (it was deleted and re-created elsewhere, so
        the version alone does not identify the log): then commit the whole log.  Raises
        SessionNotFoundError / ConcurrentWriteError like :meth:`commit`.  The returned record's ``messages``
        holds only the appended messages (fresh JSON objects): the earlier log is not read back.
        """
        sid = validate_session_id(session_id)
        version = _check_version(expected_version)
        base = _check_base_length(base_length)
        payload = encode_payload(state, messages, metadata, start=base)
        stamp = self._append(sid, payload, version, base, None if created_at is None else float(created_at))
        if stamp is None:
            return None
        new_version, stored_created_at, updated_at = stamp
        decoded, meta = decode_json(sid, payload.messages, payload.metadata)
        return SessionRecord(sid, payload.state, decoded, meta, new_version, stored_created_at, updated_at)

    def stamp(self, session_id: str) -> tuple[int, float] | None:
        """The session's stored (version, created_at), None if it does not exist, without reading its content.
        Together they identify one committed content (``created_at`` tells a re-created session apart)."""
        return self._stamp(validate_session_id(session_id))

    def list(self, prefix: str | None = None) -> list[str]:
        """Sorted ids of all sessions, or of those starting with ``prefix``."""
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidSessionDataError(f"prefix must be a str or None, not {type(prefix).__name__}")
        return self._list(prefix or None)

    def delete(self, session_id: str) -> bool:
        """Forget a session (state, log and metadata).  True if it existed."""
        return self._delete(validate_session_id(session_id))

    def copy(self, src_id: str, dst_id: str) -> SessionRecord:
        """Copy state, log and metadata to a new id (version 0); SessionExistsError if dst exists."""
        src, dst = validate_session_id(src_id), validate_session_id(dst_id)
        return decode_raw(self._copy(src, dst))

    def session_lock(self, session_id: str, *, timeout: float | None = None) -> AbstractContextManager[None]:
        """A lock on one session that holds across processes, for backends shared between processes
        (SessionBusyError after ``timeout`` seconds); :meth:`SessionStore.lock` takes it around a turn.
        By default there is none (a no-op): other processes are kept out by ``expected_version``."""
        return nullcontext()

    def close(self) -> None:
        """Release resources (no-op by default)."""

    def __enter__(self) -> "SessionBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- primitives for implementations --------------------------------------------------
    @abstractmethod
    def _get(self, session_id: str) -> RawSession | None:
        """Read one session consistently (state, log and metadata from the same version)."""

    @abstractmethod
    def _create(self, session_id: str, metadata: str) -> RawSession:
        """Insert an empty session at version 0 or raise SessionExistsError."""

    @abstractmethod
    def _commit(self, session_id: str, payload: EncodedPayload, expected_version: int) -> RawSession:
        """In one transaction: check the version, replace everything, bump the version."""

    def _append(self, session_id: str, payload: EncodedPayload, expected_version: int,
                base_length: int, created_at: float | None) -> tuple[int, float, float] | None:
        """In one transaction: check the version (ConcurrentWriteError), that the stored log has
        ``base_length`` messages and, unless ``created_at`` is None, the creation time (else return None,
        writing nothing); add ``payload.messages`` after the log, replace state and metadata, bump the
        version; return (new version, created_at, updated_at).

        This default reads the whole session and commits the whole log (correct, but O(log length));
        the optimistic version check in ``_commit`` keeps it safe against a writer in between.
        """
        raw = self._get(session_id)
        if raw is None:
            raise not_found(session_id)
        if raw.version != expected_version:
            raise conflict(session_id, expected_version, raw.version)
        if len(raw.messages) != base_length or (created_at is not None and created_at != raw.created_at):
            return None
        full = EncodedPayload(payload.state, raw.messages + payload.messages, payload.metadata)
        new = self._commit(session_id, full, expected_version)
        return new.version, new.created_at, new.updated_at

    def _stamp(self, session_id: str) -> tuple[int, float] | None:
        """(version, created_at) or None; this default reads the whole session (override to read one row)."""
        raw = self._get(session_id)
        return None if raw is None else (raw.version, raw.created_at)

    @abstractmethod
    def _list(self, prefix: str | None) -> list[str]:
        """Sorted ids, optionally filtered by a literal prefix."""

    @abstractmethod
    def _delete(self, session_id: str) -> bool:
        """Remove the session and all of its content."""

    @abstractmethod
    def _copy(self, src_id: str, dst_id: str) -> RawSession:
        """Copy src to a new dst at version 0 (SessionNotFoundError / SessionExistsError)."""
