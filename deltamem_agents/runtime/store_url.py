"""Open a session store from a URL (or a plain path): what ``DeltaMemChat(db=...)`` and ``--db`` accept.

- ``memory://``: this process only (:class:`MemoryBackend`);
- ``sqlite:///sessions.db`` (relative) or ``sqlite:////abs/dir/sessions.db`` (absolute; the SQLAlchemy
  convention: the path is what follows ``sqlite:///``; ``~`` is expanded): a SQLite file;
- ``postgresql://user:pass@host:5432/db`` (or ``postgres://``; any libpq URL): a shared Postgres store.
  An optional ``schema=<name>`` query parameter names the Postgres schema holding the tables (default
  ``deltamem``); every other parameter goes to libpq unchanged;
- anything without ``://``: a path to a SQLite file, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .store import MemoryBackend, SessionBackend, SessionStore, SQLiteBackend

__all__ = ["open_backend", "open_store", "is_store_url"]

_SCHEMES = "memory://, sqlite:///<path>, postgresql://... (or a plain file path for SQLite)"


def is_store_url(db: object) -> bool:
    """True if ``db`` is a store URL rather than a path."""
    return isinstance(db, str) and "://" in db


def _postgres(url: str) -> SessionBackend:
    from .store_postgres import PostgresBackend

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = [v for k, v in query if k == "schema"]
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment))
    return PostgresBackend(conninfo, **({"schema": schema[-1]} if schema else {}))


def open_backend(db: str | os.PathLike) -> SessionBackend:
    """The backend a URL or a SQLite path names (ValueError for an unknown scheme)."""
    if not is_store_url(db):
        return SQLiteBackend(Path(os.fsdecode(db)).expanduser())
    url = str(db)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        if url.split("://", 1)[1] not in ("", "/"):
            raise ValueError(f"memory:// takes no path or options, got {url!r}")
        return MemoryBackend()
    if scheme == "sqlite":
        rest = url.split("://", 1)[1]
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise ValueError(f"a SQLite URL is sqlite:///<relative path> or sqlite:////<absolute path>, got "
                             f"{url!r} (use memory:// for an in-memory store)")
        return SQLiteBackend(Path(rest[1:]).expanduser())
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    raise ValueError(f"unknown session store URL scheme {scheme!r}; use {_SCHEMES}")


def open_store(db: str | os.PathLike, *, cache_size: int = 64) -> SessionStore:
    """A :class:`SessionStore` over :func:`open_backend` (``cache_size`` records in its LRU)."""
    return SessionStore(open_backend(db), cache_size=cache_size)
