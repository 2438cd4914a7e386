"""Every error is OpenAI-shaped JSON with the right status, and a refused request changes nothing."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from tests.serve.conftest import MAX_BODY

USER = [{"role": "user", "content": "Hello there."}]


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("body, param", [
    ({"model": "m"}, "messages"),                                              # no messages
    ({"messages": []}, "messages"),                                            # empty
    ({"messages": USER, "temperature": -1}, "temperature"),                    # out of range
    ({"messages": USER, "max_tokens": "many"}, "max_tokens"),                  # wrong type
])
def test_a_malformed_body_is_a_400_naming_the_field(server, body, param):
    err = _error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param)


def test_bad_json_bad_messages_and_bad_session_ids_are_400s(server, client):
    before = server.chat.sessions()
    _error(httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"}), 400)
    for msgs in ([{"role": "wizard", "content": "hi"}], [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]):
        err = _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": msgs, "session_id": "bad"}), 400)
        assert err["type"] == "invalid_request_error"
    _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "session_id": "no/slashes"}), 400)
    _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "n": 2}), 400)
    _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "tool_choice": "nope",
                                                                 "tools": [{"type": "function", "function": {
                                                                     "name": "f", "parameters": {}}}]}), 400)
    _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 10**6}), 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "wizard", "content": "x"}])
    assert server.chat.history("bad") == []  # nothing was written for the refused turns
    assert set(server.chat.sessions()) - set(before) <= {"bad"}


def test_unknown_sessions_are_404s(server):
    assert _error(httpx.get(f"{server.url}/v1/sessions/nobody"), 404)["type"] == "not_found_error"
    _error(httpx.delete(f"{server.url}/v1/sessions/nobody"), 404)
    _error(httpx.post(f"{server.url}/v1/sessions/nobody/fork", json={"to": "somebody"}), 404)
    _error(httpx.get(f"{server.url}/v1/sessions/nobody/export"), 404)
    _error(httpx.get(f"{server.url}/v1/no/such/route"), 404)
    assert "somebody" not in server.chat.sessions()


def test_an_oversize_body_is_a_413(server, client):
    big = {"messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}], "session_id": "big"}
    err = _error(httpx.post(f"{server.url}/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is counted as the body streams in
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"y" * 1000
        yield b'"}]}'

    _error(httpx.post(f"{server.url}/v1/chat/completions", content=chunked(),
                      headers={"content-type": "application/json"}), 413)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="m", messages=big["messages"], extra_body={"session_id": "big"})
    assert exc.value.status_code == 413
    assert server.chat.history("big") == []


def test_a_session_busy_in_another_request_is_a_409(server):
    taken, release = threading.Event(), threading.Event()

    def hold():  # a turn running on the session, as another request's would
        with server.chat.lock("busy"):
            taken.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert taken.wait(10)
        for stream in (False, True):
            err = _error(httpx.post(f"{server.url}/v1/chat/completions",
                                    json={"messages": USER, "session_id": "busy", "stream": stream}), 409)
            assert err["code"] == "session_busy"
        _error(httpx.delete(f"{server.url}/v1/sessions/busy"), 409)
    finally:
        release.set()
        t.join()
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "session_id": "busy", "max_tokens": 2})
    assert r.status_code == 200 and len(server.chat.history("busy")) == 2


def test_an_unexpected_error_is_a_500_without_a_traceback(server, monkeypatch):
    def broken(_req):
        raise RuntimeError("secret internal detail in /srv/app.py")
        yield  # pragma: no cover

    monkeypatch.setattr(server.app.state.engine, "turn", broken)
    for stream in (False, True):
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "stream": stream})
        err = _error(r, 500)
        assert err["type"] == "server_error" and "secret" not in r.text and "Traceback" not in r.text
