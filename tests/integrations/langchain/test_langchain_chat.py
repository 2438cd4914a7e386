"""ChatDeltaMem on the real default backbone: thread routing, the history policy, persistence, tools, streaming."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from langchain_deltamem import ChatDeltaMem, clear_client_cache  # noqa: E402
from langchain_deltamem._convert import content_text, to_deltamem  # noqa: E402
from deltamem_agents.chat import StreamHoldback  # noqa: E402


def cfg(thread: str, **extra) -> dict:
    return {"configurable": {"thread_id": thread, **extra}}


# ---------------------------------------------------------------- no model needed

def test_message_conversion():
    msgs = [
        SystemMessage("Be brief."),
        HumanMessage("Hi", name="maya"),
        HumanMessage([{"type": "text", "text": "two "}, {"type": "text", "text": "blocks"}]),
        AIMessage("", tool_calls=[{"name": "calc", "args": {"x": 1}, "id": "c1"}]),
        ToolMessage("2", tool_call_id="c1"),
        AIMessage([{"type": "text", "text": "It is 2."}]),
        SystemMessage("Second rule."),
    ]
    out, system = to_deltamem(msgs)
    assert system == "Be brief.\n\nSecond rule."
    assert out == [
        {"role": "user", "content": "Hi", "name": "maya"},
        {"role": "user", "content": "two blocks"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "content": "2", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is 2."},
    ]
    with pytest.raises(ValueError, match="image"):
        content_text([{"type": "image", "url": "http://x"}])


def test_holdback_never_emits_what_the_log_drops():
    h = StreamHoldback(["you"], tools=True)
    got = "".join(h.push(d) for d in ["Hello", " yo"])  # the decoder then cuts at 'you': the log has 'Hello '
    assert got == "Hello " and h.rest("Hello ") == ""  # 'yo' was held back (a prefix of the stop sequence)
    h = StreamHoldback([], tools=True)
    got = "".join(h.push(d) for d in ["Hi", " <tool", "_call>\n{", "...}"])
    assert got == "Hi" and h.rest("Hi") == ""  # '<tool_call>' and the space before it are never streamed
    h = StreamHoldback([], tools=True)
    got = "".join(h.push(d) for d in ["Sure.", "  ", "<", "tool"])
    assert got == "Sure." and h.rest("Sure.") == ""
    h = StreamHoldback([], tools=False)
    assert "".join(h.push(d) for d in ["a ", "b "]) == "a b " and h.rest("a b c") == "c"


def test_instances_are_cheap_and_standard_fields_accepted():
    llm = ChatDeltaMem(temperature=0, max_tokens=10, timeout=60, stop=["x"], max_retries=2, streaming=True)
    assert llm._client is None  # nothing loaded until used
    ls = llm._get_ls_params()
    assert ls["ls_provider"] == "deltamem" and ls["ls_model_type"] == "chat" and ls["ls_stop"] == ["x"]
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"
    assert llm.profile["max_input_tokens"] == llm.window_budget - llm.window_reserve


# ---------------------------------------------------------------- real backbone

@pytest.mark.slow
def test_tokenizer_is_the_backbones(make_llm):
    llm = make_llm()
    tok = llm.chat.tokenizer
    assert llm.get_token_ids("Daphne's birthday") == tok("Daphne's birthday", add_special_tokens=False)["input_ids"]
    n = llm.get_num_tokens_from_messages([HumanMessage("hello there")])
    assert 3 < n < 20  # the block includes the chat template's role header


@pytest.mark.slow
def test_thread_routing(make_llm):
    llm = make_llm()
    llm.invoke("I am Ann.", config=cfg("ann"))
    llm.invoke("I am Bob.", config=cfg("bob"))
    llm.invoke("Hello.", session_id="explicit", config=cfg("ann"))  # an explicit session id wins
    llm.bind(session_id="bound").invoke("Hi.")
    by_user = make_llm(session_key="user_id")
    by_user.invoke("Hey.", config=cfg("t9", user_id="u1"))
    assert set(llm.threads()) == {"ann", "bob", "explicit", "bound", "u1"}
    assert [m.content for m in llm.thread_history("ann")][0] == "I am Ann."
    assert [m.content for m in llm.thread_history("bob")][0] == "I am Bob."
    assert len(llm.thread_history("ann")) == 2
    assert llm.session_for("a thread/with spaces").startswith("h-")
    assert not llm.thread_state("ann").equal(llm.thread_state("bob"))


@pytest.mark.slow
def test_full_history_and_only_new_give_the_same_memory(make_llm):
    llm = make_llm()
    turns = ["My sister is Daphne.", "She lives in Porto.", "What is her name?"]
    full: list = []
    for t in turns:
        full.append(HumanMessage(t))
        full.append(llm.invoke(full, config=cfg("full")))  # LangGraph style: the whole history every call
        llm.invoke([HumanMessage(t)], config=cfg("new"))      # only the new message
    assert [m.content for m in llm.thread_history("full")] == [m.content for m in llm.thread_history("new")]
    assert llm.thread_state("full").equal(llm.thread_state("new"))
    assert [m.content for m in full] == [m.content for m in llm.thread_history("full")]

    # trimmed in front: only the messages after the seen part are written
    llm.invoke(full[-2:] + [HumanMessage("Thanks.")], config=cfg("full"))
    assert len(llm.thread_history("full")) == 8
    # an earlier message edited: ignored (a written memory cannot be un-written), the new one is written
    edited = [HumanMessage("My brother is Tom.")] + llm.thread_history("full")[1:] + [HumanMessage("Bye.")]
    llm.invoke(edited, config=cfg("full"))
    hist = llm.thread_history("full")
    assert len(hist) == 10 and hist[0].content == "My sister is Daphne." and hist[-2].content == "Bye."


@pytest.mark.slow
def test_threads_are_isolated(make_llm):
    llm = make_llm()
    llm.invoke("I like tea.", config=cfg("a"))
    llm.invoke("I like chess.", config=cfg("b"))
    r_a = llm.invoke("What do I like?", config=cfg("a"))
    llm.invoke("I like tea.", config=cfg("a-alone"))
    r_alone = llm.invoke("What do I like?", config=cfg("a-alone"))
    assert r_a.content == r_alone.content
    assert llm.thread_state("a").equal(llm.thread_state("a-alone"))
    assert not llm.thread_state("a").equal(llm.thread_state("b"))


@pytest.mark.slow
def test_sqlite_checkpointer_restart_and_forget(make_llm, db, tmp_path):
    from langchain.agents import create_agent
    from langgraph.checkpoint.sqlite import SqliteSaver

    from langchain_deltamem import DeltaMemCheckpointer

    graph_db = str(tmp_path / "graph.db")
    llm = make_llm()
    saver = DeltaMemCheckpointer(SqliteSaver(sqlite3.connect(graph_db, check_same_thread=False)), llm)
    agent = create_agent(llm, [], checkpointer=saver)
    agent.invoke({"messages": [HumanMessage("My dog is Rex.")]}, cfg("p"))
    state_before = llm.thread_state("p").clone()
    assert len(llm.thread_history("p")) == 2

    clear_client_cache()  # a "restart": new clients, new checkpointer connection, same files
    llm2 = make_llm()
    assert llm2.chat is not llm.chat
    saver2 = DeltaMemCheckpointer(SqliteSaver(sqlite3.connect(graph_db, check_same_thread=False)), llm2)
    agent2 = create_agent(llm2, [], checkpointer=saver2)
    assert llm2.thread_state("p").equal(state_before)
    out = agent2.invoke({"messages": [HumanMessage("What is my dog called?")]}, cfg("p"))
    assert len(out["messages"]) == 4  # the graph resent the whole history ...
    assert len(llm2.thread_history("p")) == 4  # ... and only the new message was written
    assert not llm2.thread_state("p").equal(state_before)
    # a streamed turn: the message the graph assembles from chunks equals the logged reply, so the next
    # resend of the history is again recognised as already written
    tokens = [m.content for m, _meta in agent2.stream({"messages": [HumanMessage("Is he a good dog?")]}, cfg("p"),
                                                      stream_mode="messages") if isinstance(m, AIMessage)]
    assert len([t for t in tokens if t]) >= 2
    agent2.invoke({"messages": [HumanMessage("Thanks.")]}, cfg("p"))
    assert len(llm2.thread_history("p")) == 8
    assert [m.content for m in agent2.get_state(cfg("p")).values["messages"]] == \
        [m.content for m in llm2.thread_history("p")]

    saver2.delete_thread("p")
    assert "p" not in llm2.threads()
    assert saver2.get_tuple(cfg("p")) is None
    assert llm2.forget_thread("p") is False


class Add(BaseModel):
    """Add two integers."""

    a: int = Field(description="first number")
    b: int = Field(description="second number")


@pytest.mark.slow
def test_bind_tools_any_gives_schema_valid_args(make_llm):
    llm = make_llm(use_memory=False, max_tokens=40)
    msg = llm.bind_tools([Add], tool_choice="any").invoke("What is 2 plus 3?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "Add" and msg.tool_calls[0]["id"]
    Add(**msg.tool_calls[0]["args"])  # validates
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert msg.usage_metadata["output_tokens"] < 40  # one call, then end of turn (parallel_tool_calls=False)


@pytest.mark.slow
def test_with_structured_output_returns_an_instance(make_llm):
    llm = make_llm(use_memory=False, max_tokens=40)
    raw = llm.with_structured_output(Add, include_raw=True).invoke("Add 4 and 5.")
    assert isinstance(raw["parsed"], Add) and raw["parsing_error"] is None
    assert raw["raw"].tool_calls[0]["args"] == raw["parsed"].model_dump()


class _Count(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)


@pytest.mark.slow
def test_streaming_is_incremental_with_usage(make_llm):
    llm = make_llm(max_tokens=10)
    counter = _Count()
    chunks = list(llm.stream("Tell me about cats.", config={**cfg("s"), "callbacks": [counter]}))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 3
    assert chunks[-1].chunk_position == "last"
    assert len(counter.tokens) == len(chunks)  # once per chunk, not twice
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.usage_metadata["output_tokens"] == 10 and merged.usage_metadata["input_tokens"] > 0
    assert merged.response_metadata["model_name"] and merged.response_metadata["finish_reason"] == "length"
    assert merged.content == llm.thread_history("s")[-1].content
    # invoke with streaming=True streams internally and returns the same message shape
    msg = make_llm(max_tokens=6, streaming=True).invoke("And dogs?", config=cfg("s"))
    assert msg.usage_metadata["output_tokens"] == 6 and msg.content == llm.thread_history("s")[-1].content


@pytest.mark.slow
def test_async_does_not_block_the_loop(make_llm):
    llm = make_llm(max_tokens=6)

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        msg = await llm.ainvoke("Hi there.", config=cfg("as"))
        parts = [c async for c in llm.astream("Again.", config=cfg("as"))]
        done.set()
        await t
        return msg, parts, ticks

    msg, parts, ticks = asyncio.run(main())
    assert msg.content and parts[-1].chunk_position == "last"
    assert ticks > 10
    assert len(llm.thread_history("as")) == 4
