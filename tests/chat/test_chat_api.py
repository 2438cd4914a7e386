"""The chat model's public API for integrations: keyword construction, the weights registry and its model lock,
read-only side calls, the runtime's live-session LRU. A tiny random Llama with δ-mem on the real tokenizer."""

from __future__ import annotations

import pytest

from deltamem_agents.chat import DeltaMemChat, clear_shared_chats, model_lock, shared_chat
from deltamem_agents.runtime.sessions import LiveSessions
from deltamem_agents.runtime.store import LRUCache, MemoryBackend, SessionStore, SQLiteBackend
from deltamem_agents.runtime.window import WindowPolicy
from tests.conftest import tiny_ssw_on_real_tokenizer

GEN = {"max_new_tokens": 3}


@pytest.fixture(scope="module")
def tiny():
    return tiny_ssw_on_real_tokenizer()


def test_keyword_construction_builds_the_store_and_window(tiny, tmp_path):
    model, tok = tiny
    bot = DeltaMemChat(model, tok, in_memory=True, budget=256, reserve=32)
    assert isinstance(bot.store.backend, MemoryBackend) and bot.policy == WindowPolicy(budget=256, reserve=32)
    assert DeltaMemChat(model, tok, db=":memory:").store.backend.__class__ is MemoryBackend
    db = tmp_path / "sub" / "s.db"
    bot = DeltaMemChat(model, tok, db=db, budget=300)
    assert isinstance(bot.store.backend, SQLiteBackend) and bot.policy.budget == 300 and bot.policy.reserve == 256
    bot.chat("Hi", session_id="a", **GEN)
    assert db.is_file() and DeltaMemChat(model, tok, db=db).history("a")[0]["content"] == "Hi"
    with pytest.raises(ValueError, match="store"):
        DeltaMemChat(model, tok, store=SessionStore(MemoryBackend()), in_memory=True)
    with pytest.raises(ValueError, match="policy"):
        DeltaMemChat(model, tok, policy=WindowPolicy(), budget=512)


def test_chat_models_on_the_same_weights_share_one_model_lock(tiny):
    model, tok = tiny
    a = DeltaMemChat(model, tok, in_memory=True, budget=256, reserve=32, system_prompt="Be brief.")
    b = a.on_same_weights(use_memory=False)
    c = DeltaMemChat(model, tok, in_memory=True)
    assert a._model_lock is b._model_lock is c._model_lock is model_lock(model)
    assert b.adapter is None and a.adapter is not None and b.store is not a.store
    assert b.policy == a.policy and b.system_prompt == "Be brief." and b.model_name == a.model_name
    with a._model_lock:  # re-entrant: a thread holding it may run another chat model on the same weights
        assert b.chat("Hi", session_id="x", **GEN).finish_reason in ("stop", "length")


def test_side_stream_reads_the_session_state_and_writes_nothing(tiny):
    model, tok = tiny
    bot = DeltaMemChat(model, tok, in_memory=True, budget=256, reserve=32)
    bot.chat("My sister is called Daphne.", session_id="s", **GEN)
    before = bot.store.get("s")
    seen = []
    detached = bot.live.detached

    def spy(rec, system_prompt):
        conv = detached(rec, system_prompt)
        seen.append(conv.state.clone())
        return conv

    bot.live.detached = spy
    chunks = list(bot.side_stream("What is my sister called?", session_id="s", **GEN))
    last = chunks[-1]
    assert last.finish_reason is not None and last.message["role"] == "assistant" and last.usage["prompt_tokens"] > 0
    assert last.message["content"] == "".join(c.text for c in chunks[:-1]) or last.message.get("tool_calls")
    assert len(seen) == 1 and seen[0].equal(bot.live.decode_state(before.state))  # the committed δ-state
    after = bot.store.get("s")
    assert (after.version, after.state, after.messages) == (before.version, before.state, before.messages)
    assert bot.sessions() == ["s"]
    list(bot.side_stream("Hello?", session_id="nobody", **GEN))  # a missing session: an empty state
    assert bot.sessions() == ["s"] and seen[-1].equal(bot.live.fresh_state())


def test_live_sessions_are_one_lru_of_the_runtime(tiny):
    model, tok = tiny
    bot = DeltaMemChat(model, tok, in_memory=True, budget=256, reserve=32, live_sessions=2)
    assert isinstance(bot.live, LiveSessions) and isinstance(bot.live.conversations, LRUCache)
    assert isinstance(bot.store._cache, LRUCache)  # the store's records use the same LRU
    for sid in ("a", "b", "c"):
        bot.chat("Hi", session_id=sid, **GEN)
    assert len(bot.live.conversations) == 2 and not bot.live.is_live("a") and bot.live.is_live("c")
    log, start = bot.session_view("a")
    assert log == bot.history("a") and start == 0 and len(log) == 2
    assert bot.session_view("missing") == ([], 0)
    assert bot.count_tokens(log) > bot.count_tokens(log[:1]) > 0
    bot.delete("c")
    assert not bot.live.is_live("c") and bot.state("c") is None


def test_shared_chat_is_one_per_configuration(tiny, monkeypatch):
    from deltamem_agents.chat import loading

    model, tok = tiny
    loads = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **kw: loads.append(a) or (model, tok))
    clear_shared_chats()
    try:
        a = shared_chat(in_memory=True, budget=256, reserve=32, model_name="first")
        assert shared_chat(db=":memory:", budget=256, reserve=32, model_name="second") is a
        assert a.model_name == "first" and a.policy.budget == 256
        b = shared_chat(in_memory=True, budget=512, reserve=32)
        assert b is not a and b._model_lock is a._model_lock
        assert shared_chat(in_memory=True, budget=256, reserve=32, use_memory=False, adapter="none").adapter is None
        clear_shared_chats()
        assert shared_chat(in_memory=True, budget=256, reserve=32) is not a
    finally:
        clear_shared_chats()
