"""Opening a session store by URL (memory://, sqlite:///..., postgresql://...) or path, and a chat model whose
``db=`` is a Postgres URL: two chat models on one Postgres store (a tiny random Llama on the real tokenizer)."""

from __future__ import annotations

import pytest

from deltamem_agents.chat.loading import _db_key
from deltamem_agents.runtime.store import MemoryBackend, SQLiteBackend
from deltamem_agents.runtime.store_url import is_store_url, open_backend, open_store
from tests.runtime.conftest import with_query


def test_urls_and_paths_open_the_named_backend(tmp_path, monkeypatch):
    assert isinstance(open_backend("memory://"), MemoryBackend)
    b = open_backend(f"sqlite:///{tmp_path}/a/s.db")  # sqlite:////abs/path
    assert isinstance(b, SQLiteBackend) and b.path == tmp_path / "a" / "s.db"
    monkeypatch.chdir(tmp_path)
    assert open_backend("sqlite:///rel/s.db").path == tmp_path / "rel" / "s.db"  # sqlite:///relative
    assert open_backend(tmp_path / "p.db").path == tmp_path / "p.db"  # a path, as before
    assert open_backend(str(tmp_path / "q.db")).path == tmp_path / "q.db"
    store = open_store("memory://", cache_size=3)
    assert store.cache_size == 3 and isinstance(store.backend, MemoryBackend)
    assert is_store_url("postgresql://h/db") and not is_store_url(str(tmp_path)) and not is_store_url(tmp_path)


@pytest.mark.parametrize("url,match", [
    ("redis://localhost/0", "unknown session store URL scheme 'redis'"),
    ("mysql://user:s3cret@h/db", "unknown session store URL scheme"),
    ("memory://somewhere", "memory:// takes no path"),
    ("sqlite://", "sqlite:///"),
    ("sqlite:///:memory:", "memory://"),
])
def test_bad_urls_raise_a_clear_error(url, match):
    with pytest.raises(ValueError, match=match) as ei:
        open_backend(url)
    assert "s3cret" not in str(ei.value)


def test_postgres_url_with_schema_parameter(postgres_url, pg_schema):
    from deltamem_agents.runtime.store_postgres import PostgresBackend

    for url in (with_query(postgres_url, schema=pg_schema), with_query(postgres_url, schema=pg_schema).replace(
            "postgresql://", "postgres://", 1)):
        with open_store(url) as store:
            assert isinstance(store.backend, PostgresBackend) and store.backend.schema == pg_schema
            assert "schema=" not in store.backend.conninfo  # ours, not passed to libpq
            store.get_or_create("x")
    with open_store(with_query(postgres_url, schema=pg_schema)) as store:
        assert store.list() == ["x"]


def test_chat_models_share_one_postgres_store_by_url(postgres_url, pg_schema, one_thread):
    from deltamem_agents.chat import DeltaMemChat
    from deltamem_agents.runtime.store_postgres import PostgresBackend
    from tests.conftest import tiny_ssw_on_real_tokenizer

    model, tok = tiny_ssw_on_real_tokenizer()
    url = with_query(postgres_url, schema=pg_schema)
    a = DeltaMemChat(model, tok, db=url, budget=256, reserve=32)
    assert isinstance(a.store.backend, PostgresBackend)
    a.chat("Hi, I am Ada.", session_id="ada", max_new_tokens=2)
    b = DeltaMemChat(model, tok, db=url, budget=256, reserve=32)  # another process would do the same
    assert b.history("ada")[0]["content"] == "Hi, I am Ada." and b.sessions() == ["ada"]
    assert b.store.get("ada").state == a.store.get("ada").state is not None  # the δ-state went through too
    assert _db_key(url, False) == url  # shared_chat keys a store URL as given, never as a path
    # turns on one session alternating between the two (as two servers would): each sees the other's turns
    # (a live copy another process has committed over is reloaded), none is lost or refused
    for i, bot in enumerate([b, a, b, a]):
        bot.add_messages([{"role": "user", "content": f"note {i}"}], session_id="ada")
    history = [m["content"] for m in a.history("ada") if m["role"] == "user"]
    assert history == ["Hi, I am Ada.", "note 0", "note 1", "note 2", "note 3"] and b.history("ada") == a.history("ada")
    assert a.store.backend.stamp("ada")[0] == 5 and a.store.backend.stamp("nobody") is None
    a.store.close()
    b.store.close()


def test_sessions_cli_takes_a_store_url(postgres_url, pg_schema):
    from typer.testing import CliRunner

    from deltamem_agents.cli import app

    url = with_query(postgres_url, schema=pg_schema)
    with open_store(url) as store:
        store.commit(store.get_or_create("u-1"), state=b"s", messages=[{"role": "user", "content": "hi"}],
                     metadata={})
        store.get_or_create("u-2")
    runner = CliRunner()
    out = runner.invoke(app, ["sessions", "list", "--db", url])
    assert out.exit_code == 0 and out.output.split() == ["u-1", "u-2"], out.output
    out = runner.invoke(app, ["sessions", "delete", "u-2", "--db", url])
    assert out.exit_code == 0 and "deleted" in out.output
    assert runner.invoke(app, ["sessions", "list", "--db", url]).output.split() == ["u-1"]
