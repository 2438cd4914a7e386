"""Two API server processes sharing one Postgres session store (real uvicorn servers on loopback, a tiny random
model on the real tokenizer, real HTTP requests): interleaved and concurrent turns on the same session and on
different sessions lose no update, are never refused, and never show one session another's messages."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")
httpx = pytest.importorskip("httpx")

from deltamem_agents.runtime.store_postgres import PostgresBackend  # noqa: E402
from tests.runtime.conftest import with_query  # noqa: E402
from tests.runtime.store_contract import child_env  # noqa: E402

CHILD = str(Path(__file__).with_name("serve_child.py"))


@pytest.fixture
def two_servers(postgres_url, pg_schema):
    url = with_query(postgres_url, schema=pg_schema)
    procs = [subprocess.Popen([sys.executable, CHILD, url], env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        ports = []
        for p in procs:
            line = p.stdout.readline().strip()
            assert line.isdigit(), p.stderr.read() if p.poll() is not None else line
            ports.append(int(line))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def _turn(server: str, session: str, text: str) -> dict:
    body = {"model": "smollm2-135m-instruct", "session_id": session, "max_tokens": 2,
            "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _user_texts(backend: PostgresBackend, session: str) -> list[str]:
    return [m["content"] for m in backend.get(session).messages if m["role"] == "user"]


def test_two_servers_share_sessions_without_lost_updates_or_cross_talk(two_servers, postgres_url, pg_schema):
    a, b = two_servers
    # interleaved: one session's turns alternate between the servers (each has a live copy the other
    # commits over), two more sessions start on different servers and switch
    for i in range(4):
        _turn([a, b][i % 2], "shared", f"shared note {i}")
        _turn([a, b][i % 2], "alice", f"alice note {i}")
        _turn([b, a][i % 2], "bob", f"bob note {i}")
    # concurrent: both servers take turns on one session at once (the cross-process session lock queues
    # them), while another session runs beside them
    errors: list[BaseException] = []

    def run(server: str, session: str, texts: list[str]) -> None:
        try:
            for text in texts:
                _turn(server, session, text)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    jobs = [(a, "race", [f"race a{i}" for i in range(3)]), (b, "race", [f"race b{i}" for i in range(3)]),
            (b, "calm", [f"calm {i}" for i in range(2)])]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors

    store = PostgresBackend(postgres_url, schema=pg_schema)
    try:
        assert store.list() == ["alice", "bob", "calm", "race", "shared"]
        for session in ("shared", "alice", "bob"):  # every turn, once, in order, and nobody else's
            assert _user_texts(store, session) == [f"{session} note {i}" for i in range(4)]
            assert store.get(session).version == 4
        race = _user_texts(store, "race")
        assert sorted(race) == sorted(jobs[0][2] + jobs[1][2]) and store.get("race").version == 6
        assert [t for t in race if t.startswith("race a")] == jobs[0][2]  # each server's turns in its order
        assert _user_texts(store, "calm") == jobs[2][2]
        for session in store.list():  # each turn logged its reply right after its user message
            roles = [m["role"] for m in store.get(session).messages]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
        info = httpx.get(f"{a}/v1/sessions/race", timeout=30).json()  # a server reads the other's turns
        assert info["version"] == 6 and info["num_messages"] == 12
    finally:
        store.close()
