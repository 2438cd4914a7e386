"""DeltaMemLLM: the LlamaIndex LLM contract on the real default backbone."""

from __future__ import annotations

import asyncio
import time

import pytest
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock

from .conftest import MAX_NEW, TOOL_MAX_NEW

U = ChatMessage.from_str


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# --- pure logic (no model) ----------------------------------------------------------------------------------
def test_continuation_rule():
    from llama_index_deltamem._convert import continues_session

    u1, a1 = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    u2, a2 = {"role": "user", "content": "and?"}, {"role": "assistant", "content": "so"}
    u3 = {"role": "user", "content": "next"}
    log = [u1, a1, u2, a2]
    assert continues_session([], [u1])
    assert continues_session(log, [u1, a1, u2, a2, u3])  # whole history resent
    assert continues_session(log, [u2, a2, u3])  # only the visible window resent
    assert continues_session(log, [u3])  # only the new message sent
    assert not continues_session(log, [u1, a1, u2, a2])  # nothing new to answer
    assert not continues_session(log, [u1, a1, u3])  # resent history that skips the end: a side call
    assert not continues_session(log, [u2, a2, u3, a1])  # ends with an assistant message


def test_message_conversion_round_trip():
    from llama_index_deltamem._convert import SESSION_KEY, split_messages, to_chat_message

    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}
    msgs = [ChatMessage(role="system", content="s1"), ChatMessage(role="developer", content="s2"),
            to_chat_message({"role": "user", "content": "q"}, "sess"), to_chat_message(call),
            to_chat_message({"role": "tool", "content": "3", "tool_call_id": "c1"})]
    assert isinstance(msgs[3].blocks[0], ToolCallBlock) and msgs[2].additional_kwargs[SESSION_KEY] == "sess"
    system, out, tag = split_messages(msgs)
    assert system == "s1\n\ns2" and tag == "sess"
    assert out[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    assert out[2] == {"role": "tool", "content": "3", "tool_call_id": "c1"}
    with pytest.raises(ValueError, match="several"):
        split_messages([to_chat_message({"role": "user", "content": "x"}, "a"),
                        to_chat_message({"role": "user", "content": "y"}, "b")])


# --- on the model ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_metadata_and_session_binding(llm):
    md = llm.metadata
    assert md.is_chat_model and md.is_function_calling_model
    assert md.context_window == llm.client.policy.budget and md.num_output == MAX_NEW
    assert md.model_name == llm.client.model_name
    other = llm.for_session("t-other")
    assert other.session_id == "t-other" and other.client is llm.client and llm.session_id == "t-default"


@pytest.mark.slow
def test_chat_writes_the_turn_and_reports_usage(llm):
    r = llm.chat([ChatMessage(role="system", content="Answer briefly."), U("My cat is called Tom.")])
    usage = r.raw["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= MAX_NEW
    assert r.additional_kwargs["completion_tokens"] == usage["completion_tokens"]
    assert r.raw["session_id"] == "t-default" and not r.raw["side_call"]
    log = llm.client.history("t-default")
    assert [m["role"] for m in log] == ["user", "assistant"] and log[1]["content"] == r.message.content
    # a side call (history that does not continue the log) reads the session but writes nothing
    side = llm.chat([U("My cat is called Tom."), U("Hm?")], max_new_tokens=4)
    assert side.raw["side_call"] and len(llm.client.history("t-default")) == 2
    # complete() is always a side call, and so is every call of a read-only copy
    c = llm.complete("Say yes.", max_new_tokens=4)
    assert c.raw["side_call"]
    ro = llm.model_copy(update={"read_only": True})
    assert ro.client is llm.client and ro.chat([U("One more thing.")], max_new_tokens=4).raw["side_call"]
    assert len(llm.client.history("t-default")) == 2


@pytest.mark.slow
def test_stream_chat_yields_incremental_text(llm):
    chunks = list(llm.stream_chat([U("Count from one to ten.")]))
    deltas = [c.delta for c in chunks if c.delta]
    assert len(deltas) >= 3
    assert chunks[-1].message.content == "".join(deltas)
    assert all(len(a.message.content or "") <= len(b.message.content or "") for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1].raw["usage"]["completion_tokens"] > 0
    completions = list(llm.stream_complete("Count from one to five.", max_new_tokens=8))
    assert len([c for c in completions if c.delta]) >= 2 and completions[-1].text == "".join(c.delta or "" for c in completions)


@pytest.mark.slow
def test_async_methods_do_not_block_the_event_loop(llm):
    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        start = time.perf_counter()
        r = await llm.achat([U("Tell me about the sea.")])
        deltas = [c.delta async for c in await llm.astream_chat([U("And about mountains?")]) if c.delta]
        c = await llm.acomplete("Say hi.", max_new_tokens=4)
        elapsed = time.perf_counter() - start
        done.set()
        await t
        return r, deltas, c, ticks, elapsed

    r, deltas, c, ticks, elapsed = asyncio.run(main())
    assert r.message.content and len(deltas) >= 2 and c.text
    assert ticks >= 0.3 * elapsed / 0.01  # the loop kept running while the model worked
    assert [m["role"] for m in llm.client.history("t-default")] == ["user", "assistant"] * 2


@pytest.mark.slow
def test_forced_tool_call_has_schema_valid_arguments(llm):
    from llama_index.core.tools import FunctionTool

    tool = FunctionTool.from_defaults(add)
    r = llm.chat_with_tools([tool], user_msg="What is 2 plus 3?", tool_required=True, max_new_tokens=TOOL_MAX_NEW)
    calls = llm.get_tool_calls_from_response(r)
    assert len(calls) == 1 and calls[0].tool_name == "add"
    tool.metadata.fn_schema.model_validate(calls[0].tool_kwargs)  # raises if the arguments do not fit the schema
    assert set(calls[0].tool_kwargs) == {"a", "b"}
    out = tool(**calls[0].tool_kwargs)
    assert out.raw_output == calls[0].tool_kwargs["a"] + calls[0].tool_kwargs["b"]
    logged = llm.client.history("t-default")[-1]
    assert logged["tool_calls"][0]["function"]["name"] == "add"
    # the reply streamed to the caller never shows the raw <tool_call> markup
    text = "".join(c.delta or "" for c in llm.stream_chat_with_tools(
        [tool], user_msg="Add 4 and 5.", tool_choice="add", max_new_tokens=TOOL_MAX_NEW, session_id="t-tools2"))
    assert "<tool_call" not in text
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(llm.chat([U("Hi")], max_new_tokens=2, session_id="t-none"))
