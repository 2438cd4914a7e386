"""The official `openai` client against the real server: memory per session, stateless calls, streaming, tools."""

from __future__ import annotations

import json

import httpx
import torch

SISTER = "My sister is called Daphne and she lives in Oslo."
MAX = 5


def _same_state(a, b) -> None:
    torch.testing.assert_close(a.S, b.S, rtol=1e-5, atol=1e-6)


def test_a_fact_told_once_is_kept_by_its_session_only(server, client, reference):
    chat = server.chat
    first = client.chat.completions.create(model="any", messages=[{"role": "user", "content": SISTER}],
                                           max_tokens=MAX, temperature=0, extra_body={"session_id": "alice"})
    reply = first.choices[0].message.content
    # the whole history resent (LangGraph style): only the new message is written
    history = [{"role": "user", "content": SISTER}, {"role": "assistant", "content": reply},
               {"role": "user", "content": "Where does she live?"}]
    second = client.chat.completions.create(model="any", messages=history, max_tokens=MAX,
                                            extra_headers={"X-Session-Id": "ignored"},
                                            extra_body={"session_id": "alice"})
    other = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Where does she live?"}],
                                           max_tokens=MAX, extra_headers={"X-Session-Id": "bob"})
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= MAX
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens

    info = httpx.get(f"{server.url}/v1/sessions/alice").json()
    assert info["num_messages"] == 4 and info["version"] == 2 and info["state_bytes"] > 0
    log = chat.history("alice")
    assert log[0]["content"] == SISTER and [m["role"] for m in log] == ["user", "assistant"] * 2
    assert all(SISTER not in m["content"] for m in chat.history("bob"))
    assert not torch.equal(chat.state("alice").S, chat.live.fresh_state().S)
    # the same turns in process give the same greedy replies and the same δ-states
    r1 = reference.chat(SISTER, session_id="alice", max_new_tokens=MAX)
    r2 = reference.chat(history, session_id="alice", max_new_tokens=MAX)
    r3 = reference.chat("Where does she live?", session_id="bob", max_new_tokens=MAX)
    assert (reply, second.choices[0].message.content, other.choices[0].message.content) == (r1.text, r2.text, r3.text)
    _same_state(chat.state("alice"), reference.state("alice"))
    _same_state(chat.state("bob"), reference.state("bob"))  # bob's memory never saw alice's fact
    assert first.usage.prompt_tokens == r1.usage["prompt_tokens"]


def test_the_user_field_names_the_session(server, client):
    client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi, I am Carol."}],
                                   max_tokens=2, user="carol")
    assert server.chat.history("carol")[0]["content"] == "Hi, I am Carol."


def test_a_request_without_a_session_stores_nothing(server, client, reference):
    before = server.chat.sessions()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SISTER}]
    r = client.chat.completions.create(model="any", messages=msgs, max_tokens=MAX)
    assert server.chat.sessions() == before
    ref = reference.side_stream(msgs, max_new_tokens=MAX)
    assert r.choices[0].message.content == "".join(c.text for c in ref)
    assert reference.sessions() == []


def test_streaming_sends_the_reply_the_session_logs(server, client, reference):
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": SISTER}],
                                            max_tokens=MAX, stream=True, stream_options={"include_usage": True},
                                            extra_body={"session_id": "streamer"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish in (["stop"], ["length"]) and chunks[-1].usage.completion_tokens >= 1
    assert server.chat.history("streamer")[-1]["content"] == text
    assert text == reference.chat(SISTER, session_id="streamer", max_new_tokens=MAX).text
    _same_state(server.chat.state("streamer"), reference.state("streamer"))


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
                   "required": ["city"]}}}


def test_a_forced_tool_call_comes_back_in_openai_form(server, client):
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "What is the weather in Oslo?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64,
        extra_body={"session_id": "tools"})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"] in ("Oslo", "Paris")
    # the tool result goes back on the same session, as the OpenAI tool loop sends it
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}, choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}]
    client.chat.completions.create(model="any", messages=msgs, tools=[WEATHER], max_tokens=3,
                                   extra_body={"session_id": "tools"})
    assert [m["role"] for m in server.chat.history("tools")] == ["user", "assistant", "tool", "assistant"]


def test_a_streamed_tool_call(server, client):
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
        tool_choice="required", max_tokens=64, stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) >= 1 and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert json.loads(calls[0].function.arguments)["city"] in ("Oslo", "Paris")
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip().startswith("<tool")


def test_models(server, client):
    assert [m.id for m in client.models.list().data] == [server.chat.model_name]


def test_a_message_longer_than_the_window_is_accepted(server, client):
    long = " ".join(f"Note {i}: the key to locker {i} is under mat {i % 5}." for i in range(80))
    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": long}], max_tokens=3,
                                       extra_body={"session_id": "long"})
    assert r.usage.prompt_tokens <= server.chat.policy.budget
    assert server.chat.history("long")[0]["content"] == long


def test_stop_sequences_cut_the_reply(server, client, reference):
    msgs = [{"role": "user", "content": "Count from one to ten."}]
    full = reference.side_stream(msgs, max_new_tokens=8)
    text = "".join(c.text for c in full)
    stop = text.strip()[len(text.strip()) // 2:][:2]
    assert stop, "the tiny model's reply is needed to pick a stop sequence"
    r = client.chat.completions.create(model="any", messages=msgs, max_tokens=8, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == text[:text.find(stop)]


def test_a_client_that_disconnects_mid_stream_leaves_the_session_unchanged(server):
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400, "stream": True,
            "session_id": "gone"}
    with httpx.Client(timeout=30) as c, c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content":' in line and '"content": ""' not in line:
                break  # the first content delta: hang up
    with server.chat.lock("gone", timeout=30):  # the turn has ended (rolled back)
        assert server.chat.history("gone") == []
