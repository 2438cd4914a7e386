"""A server whose chat model batches across sessions (max_batch=4) answers concurrent requests on different
sessions exactly as one that decodes each turn alone answers them one after another (greedy), and really
runs them as batches. Real uvicorn server on loopback, real HTTP clients, tiny model over the real tokenizer."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.serve.conftest import LiveServer

ATOL = 2e-4
N = 4


def _messages(i: int, k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"turn {k} of session {i}: " + "tell me more " * ((i * 3 + k) % 5)}]


def _body(i: int, k: int) -> dict:
    return {"messages": _messages(i, k), "max_tokens": 3 + 2 * i, "temperature": 0, "session_id": f"b{i}"}


@pytest.fixture(scope="module")
def batched_server(tiny_chat):
    from deltamem_agents.serve import create_app

    chat = tiny_chat.on_same_weights(in_memory=True, max_batch=N, batch_wait_ms=300.0)
    live = LiveServer(create_app(chat, busy_timeout=30.0, default_max_tokens=8))
    live.chat = chat
    yield live
    live.stop()
    chat.close()


def test_concurrent_requests_batch_and_equal_serial_turns(batched_server, tiny_chat):
    serial = tiny_chat.on_same_weights(in_memory=True)  # max_batch=1: each turn decoded alone
    assert serial.batcher is None
    url = batched_server.url + "/v1/chat/completions"
    for k in range(2):  # the second round continues each session's cursor and δ-state
        ref = [serial.chat(_messages(i, k), session_id=f"b{i}", max_new_tokens=3 + 2 * i) for i in range(N)]
        out: dict[int, dict] = {}
        start = threading.Barrier(N)

        def request(i: int) -> None:
            start.wait()
            r = httpx.post(url, json=_body(i, k), timeout=120)
            out[i] = {"status": r.status_code, "body": r.json()}

        threads = [threading.Thread(target=request, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(N):
            assert out[i]["status"] == 200, out[i]
            choice = out[i]["body"]["choices"][0]
            assert choice["message"]["content"] == ref[i].text
            assert choice["finish_reason"] == ref[i].finish_reason
            assert out[i]["body"]["usage"]["completion_tokens"] == ref[i].usage["completion_tokens"]
            assert out[i]["body"]["usage"]["prompt_tokens"] == ref[i].usage["prompt_tokens"]
    chat = batched_server.chat
    for i in range(N):
        sid = f"b{i}"
        assert chat.history(sid) == serial.history(sid)
        assert chat.session_view(sid) == serial.session_view(sid)
        assert chat.state(sid).equal(serial.state(sid), atol=ATOL)
    assert max(chat.batcher.batches) > 1  # concurrent turns really shared forwards
    # a stateless request (no session) goes through the batcher too and writes nothing
    before = chat.sessions()
    r = httpx.post(url, json={"messages": _messages(0, 0), "max_tokens": 4, "temperature": 0}, timeout=120)
    side = "".join(c.text for c in serial.side_stream(_messages(0, 0), max_new_tokens=4))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == side
    assert chat.sessions() == before


def test_max_batch_is_validated(tiny_chat):
    with pytest.raises(ValueError, match="max_batch"):
        tiny_chat.on_same_weights(in_memory=True, max_batch=0)
