"""One real Postgres server for the whole test session (see pg_server.py), skipped with the reason if none
can start; each test gets a fresh Postgres schema in it, dropped afterwards."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest


@pytest.fixture(scope="session")
def postgres_url():
    pytest.importorskip("psycopg", reason="the Postgres store tests need psycopg 3")
    from tests.runtime.pg_server import start_postgres

    try:
        server = start_postgres()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no Postgres server for the tests: {exc}")
    yield server.url
    server.stop()


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def pg_schema(postgres_url):
    """A fresh schema name for this test; the schema (tables and all) is dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
