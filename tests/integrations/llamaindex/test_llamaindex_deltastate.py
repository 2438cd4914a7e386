"""The δ-state itself through the LlamaIndex classes, with δ-mem attached.

No trained adapter may ship yet, so this attaches a freshly initialised, randomised adapter to a separate
copy of the default backbone (the process-wide cached weights stay untouched): the answers mean nothing,
but the state must be written, kept per session, persisted, read by side calls and never changed by them.
"""

from __future__ import annotations

import pytest
from llama_index.core.llms import ChatMessage

from .conftest import MAX_NEW

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def delta_model():
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.patching.attach import attach

    from tests.conftest import randomize_adapter

    model, tok = load_backbone()
    randomize_adapter(attach(model), seed=0, scale=0.1)
    return model, tok


def _llm(delta_model, store, session_id):
    from deltamem_agents.chat.model import DeltaMemChat

    from llama_index_deltamem import DeltaMemLLM

    model, tok = delta_model
    return DeltaMemLLM(DeltaMemChat(model, tok, store=store), max_new_tokens=MAX_NEW, session_id=session_id)


def test_state_is_written_per_session_persisted_and_untouched_by_side_calls(delta_model, tmp_path):
    from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
    from llama_index.core.chat_engine import SimpleChatEngine

    from llama_index_deltamem import DeltaMemMemory, baseline_llm

    db = tmp_path / "sessions.db"
    llm = _llm(delta_model, SessionStore(SQLiteBackend(db)), "s-a")
    assert llm.client.adapter is not None
    a = DeltaMemMemory.from_defaults(llm=llm)
    b = DeltaMemMemory.from_defaults(llm=llm, session_id="s-b")
    SimpleChatEngine.from_defaults(llm=llm, memory=a).chat("My sister is called Daphne.")
    SimpleChatEngine.from_defaults(llm=llm, memory=b).chat("I have no sister.")
    store = llm.client.store
    state_a, state_b = store.get("s-a").state, store.get("s-b").state
    assert state_a and state_b and state_a != state_b  # one δ-state per session

    # side calls read the state (through a throw-away copy) and write nothing
    side = llm.complete("What is my sister called?")
    assert side.raw["side_call"] and store.get("s-a").state == state_a
    chat = llm.chat([ChatMessage(role="user", content="My sister is called Daphne."),
                     ChatMessage(role="user", content="Her name?")])  # out of line with the log: a side call
    assert chat.raw["side_call"] and store.get("s-a").state == state_a and len(llm.client.history("s-a")) == 2
    assert llm.client.sessions() == ["s-a", "s-b"]  # no throw-away session left behind

    # the stateless baseline on the same weights never reads or writes a δ-state
    base = baseline_llm(llm)
    assert base.client.adapter is None and base.chat([ChatMessage(role="user", content="Hi")]).raw["side_call"]
    store.close()

    # a new process: the state comes back bit for bit and the next turn builds on it
    llm2 = _llm(delta_model, SessionStore(SQLiteBackend(db)), "s-a")
    a2 = DeltaMemMemory.from_defaults(llm=llm2)
    assert llm2.client.store.get("s-a").state == state_a
    SimpleChatEngine.from_defaults(llm=llm2, memory=a2).chat("What is my sister called?")
    assert llm2.client.store.get("s-a").state != state_a and len(a2.get_all()) == 4
    a2.reset()
    assert llm2.client.store.get("s-a") is None and llm2.client.store.get("s-b").state == state_b
    llm2.client.store.close()
