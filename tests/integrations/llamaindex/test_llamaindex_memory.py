"""DeltaMemMemory: LlamaIndex memory semantics over a δ-mem session (window, set/reset, isolation, persistence)."""

from __future__ import annotations

import pytest
from llama_index.core.llms import ChatMessage

from .conftest import MAX_NEW, make_chat, roles

pytestmark = pytest.mark.slow


def _pairs(n: int) -> list[ChatMessage]:
    out = []
    for i in range(n):
        out += [ChatMessage(role="user", content=f"Note {i}: locker {i} holds a {['red', 'blue', 'green'][i % 3]} box."),
                ChatMessage(role="assistant", content="Noted.")]
    return out


def test_window_put_set_reset_and_a_turn_on_top():
    from deltamem_agents.runtime.window import WindowPolicy
    from llama_index.core.chat_engine import SimpleChatEngine

    from llama_index_deltamem import DeltaMemLLM, DeltaMemMemory
    from llama_index_deltamem._convert import SESSION_KEY

    chat = make_chat(policy=WindowPolicy(budget=128, reserve=16))
    llm = DeltaMemLLM(chat, max_new_tokens=MAX_NEW, session_id="m")
    memory = DeltaMemMemory.from_defaults(llm=llm)
    for i in range(0, 10, 2):  # written without generating (DeltaMemChat.add_messages), turn by turn
        memory.put_messages(_pairs(5)[i:i + 2])
    everything, window = memory.get_all(), memory.get()
    assert len(everything) == 10 and roles(chat.history("m")) == ["user", "assistant"] * 5
    assert 0 < len(window) < 10  # older messages were evicted from the window: not resent to the model
    assert [m.content for m in window] == [m.content for m in everything[-len(window):]]
    assert all(m.additional_kwargs[SESSION_KEY] == "m" for m in window)

    # a turn on top: the engine sends only the window + the new message; the log grows by exactly one turn
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    reply = engine.chat("Which colour is the box in locker 3?")
    assert len(chat.history("m")) == 12 and len(memory.get_all()) == 12
    assert reply.sources == [] and chat.history("m")[-1]["content"] == reply.response

    # set(): a continuation only adds; anything else replaces the session
    memory.set(memory.get_all() + [ChatMessage(role="user", content="ok"), ChatMessage(role="assistant", content="k")])
    assert len(chat.history("m")) == 14
    memory.set(_pairs(1))
    assert [m["content"] for m in chat.history("m")] == [m.content for m in _pairs(1)]
    memory.reset()
    assert memory.get_all() == [] and chat.store.get("m") is None


def test_sessions_are_isolated(llm):
    from llama_index.core.chat_engine import SimpleChatEngine

    from llama_index_deltamem import DeltaMemMemory

    alice = DeltaMemMemory.from_defaults(llm=llm, session_id="alice")
    bob = DeltaMemMemory.from_defaults(llm=llm, session_id="bob")
    SimpleChatEngine.from_defaults(llm=alice.llm, memory=alice).chat("My name is Alice.")
    SimpleChatEngine.from_defaults(llm=bob.llm, memory=bob).chat("My name is Bob.")
    assert [m.content for m in alice.get_all()][0] == "My name is Alice."
    assert [m.content for m in bob.get_all()][0] == "My name is Bob."
    assert all("Bob" not in (m["content"] or "") for m in llm.client.history("alice"))
    sa, sb = llm.client.state("alice"), llm.client.state("bob")
    if sa is not None:  # with a δ-mem adapter: two different states
        assert sa is not sb and sa.to_bytes() != sb.to_bytes()
    alice.reset()
    assert alice.get_all() == [] and roles(bob.get_all()) == ["user", "assistant"]


def test_memory_persists_across_instances_with_sqlite(tmp_path):
    from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
    from llama_index.core.chat_engine import SimpleChatEngine

    from llama_index_deltamem import DeltaMemLLM, DeltaMemMemory

    db = tmp_path / "sessions.db"
    llm1 = DeltaMemLLM(make_chat(SessionStore(SQLiteBackend(db))), max_new_tokens=MAX_NEW, session_id="persist")
    mem1 = DeltaMemMemory.from_defaults(llm=llm1)
    SimpleChatEngine.from_defaults(llm=llm1, memory=mem1).chat("My name is Alice.")
    before = llm1.client.store.get("persist")
    llm1.client.store.close()

    # a new process would do exactly this: new store, new chat model, new LLM, new memory on the same file
    llm2 = DeltaMemLLM(make_chat(SessionStore(SQLiteBackend(db))), max_new_tokens=MAX_NEW, session_id="persist")
    mem2 = DeltaMemMemory.from_defaults(llm=llm2)
    assert [(m.role.value, m.content) for m in mem2.get_all()] == [
        (m["role"], m["content"]) for m in before.messages]
    assert llm2.client.store.get("persist").state == before.state  # the δ-state bytes survived
    SimpleChatEngine.from_defaults(llm=llm2, memory=mem2).chat("What is my name?")
    assert roles(llm2.client.history("persist")) == ["user", "assistant"] * 2
    llm2.client.store.close()


def test_baseline_memories_persist(tmp_path, llm, embed):
    import asyncio

    from llama_index_deltamem import baseline_llm, buffer_memory, rag_memory

    base = baseline_llm(llm)
    msgs = _pairs(6)
    buf = buffer_memory(base, "pb", database_path=tmp_path / "buffer.db")
    buf.put_messages(msgs)
    again = buffer_memory(base, "pb", database_path=tmp_path / "buffer.db")
    assert [m.content for m in again.get_all()] == [m.content for m in msgs]
    assert len(again.get()) == len(msgs)  # well under the δ-mem window budget

    kw = dict(embed_model=embed, token_limit=40, persist_dir=tmp_path / "vectors", database_path=tmp_path / "rag.db")
    rag = rag_memory(base, "pr", **kw)
    asyncio.run(rag.aput_messages(msgs))  # over the limit: the oldest messages go to the vector block
    assert len(rag.memory_blocks[0].vector_store) >= 1
    rag2 = rag_memory(base, "pr", **kw)
    shown = rag2.get(input="Which colour is the box in locker 0?")
    assert shown[0].role.value == "system" and "<retrieved_history>" in shown[0].content  # from the restored store
    assert "locker" in shown[0].content
    other = rag_memory(base, "someone-else", **kw)  # one store, scoped by session
    assert "locker" not in " ".join(m.content or "" for m in other.get(input="Which colour is the box in locker 0?"))
