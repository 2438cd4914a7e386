"""Sessions on the real default backbone: the runtime writes exactly what the trainer replays."""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.core.config import ssw
from deltamem_agents.datasets.synthetic import generate
from deltamem_agents.patching import attach
from deltamem_agents.runtime.decode import Engine
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.store import MemoryBackend, SessionStore, SQLiteBackend
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from tests.conftest import randomize_adapter

pytestmark = pytest.mark.slow
POLICY = WindowPolicy(budget=160, reserve=24)


@pytest.fixture(scope="module")
def model_tok():
    model, tok = load_backbone()
    adapter = attach(model, ssw())
    randomize_adapter(adapter, seed=11, scale=0.3)
    return model, tok


def _bot(model_tok, store=None, policy=POLICY):
    model, tok = model_tok
    return DeltaMemChat(model, tok, store=store or SessionStore(MemoryBackend()), policy=policy)


def test_turn_by_turn_equals_the_trainers_passes(model_tok):
    model, tok = model_tok
    ep = generate(1, seed=3, split="train", mix={"fact": 1.0}, distance_range=(300, 300))[0]
    bot = _bot(model_tok)
    for m in ep.messages:  # live: one message at a time, evicting in chunks as the window fills
        bot.add_messages([m], session_id="s")
    bot.add_messages([{"role": "user", "content": ep.question}, {"role": "assistant", "content": ep.answer}],
                     session_id="s")
    conv = bot._conversation("s")
    assert conv.window_start > 0, "the test needs evictions to be meaningful"
    # offline: the trainer's epochs over the same conversation, each a fresh forward from position 0
    passes = build_passes(ep, ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT), POLICY)
    assert len(passes.write_passes) >= 2 and passes.epochs[-1].start == conv.window_start
    engine = Engine(model, tok)
    state = model.deltamem.zero_state(1)
    for ids, mids in passes.write_passes + [(passes.read_ids, passes.read_mids)]:
        cur = engine.new_cursor(state)
        engine.forward(cur, ids, mids)
        state = cur.state
    assert state.S.abs().sum() > 0
    torch.testing.assert_close(conv.state.S, state.S, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.state.pend_sum, state.pend_sum, rtol=1e-4, atol=1e-4)
    assert torch.equal(conv.state.pend_id, state.pend_id)


def test_interleaved_sessions_are_isolated(model_tok):
    turns = {"a": ["My dog is called Rex.", "What is my dog called?"],
             "b": ["I live in Lisbon.", "Where do I live?"]}
    alone = _bot(model_tok)
    ref = {s: [alone.chat(t, session_id=s, max_new_tokens=6).text for t in ts] for s, ts in turns.items()}
    mixed = _bot(model_tok)
    got = {s: [] for s in turns}
    for i in range(2):
        for s in turns:
            got[s].append(mixed.chat(turns[s][i], session_id=s, max_new_tokens=6).text)
    assert got == ref
    for s in turns:
        assert mixed.state(s).equal(alone.state(s))
    assert not mixed.state("a").equal(mixed.state("b"))


def test_restart_fork_delete(model_tok, tmp_path):
    db = tmp_path / "s.db"
    bot = _bot(model_tok, SessionStore(SQLiteBackend(db)))
    bot.chat("My cat is called Miso.", session_id="u1", max_new_tokens=5)
    state = bot.state("u1").clone()
    history = bot.history("u1")
    # a new process would build a new store and chat model on the same file
    bot2 = _bot(model_tok, SessionStore(SQLiteBackend(db)))
    assert bot2.history("u1") == history and bot2.state("u1").equal(state)
    r = bot2.chat("What is my cat called?", session_id="u1", max_new_tokens=5)
    assert r.usage["completion_tokens"] > 0 and len(bot2.history("u1")) == 4
    bot2.fork("u1", "u2")
    assert bot2.state("u2").equal(bot2.state("u1"))
    bot2.chat("I also have a dog.", session_id="u2", max_new_tokens=3)
    assert len(bot2.history("u1")) == 4 and len(bot2.history("u2")) == 6
    assert bot2.delete("u1") and "u1" not in bot2.sessions()
    assert bot2.history("u1") == []


def test_forced_tool_call_is_schema_valid(model_tok):
    tool = {"type": "function", "function": {"name": "add_note", "description": "Save a note",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"},
                                                             "priority": {"type": "integer"}},
                           "required": ["text", "priority"]}}}
    bot = _bot(model_tok, policy=WindowPolicy(budget=1024, reserve=96))  # tool schemas fill the system prompt
    r = bot.chat("Remember to buy milk, priority 2.", session_id="t", tools=[tool], tool_choice="add_note",
                 max_new_tokens=60)
    assert r.finish_reason == "tool_calls" and len(r.tool_calls) >= 1
    call = r.tool_calls[0]
    assert call["name"] == "add_note" and call["id"]
    assert isinstance(call["args"]["text"], str) and isinstance(call["args"]["priority"], int)
    # the tool result goes back into the conversation (and the state) like any message
    bot.chat([{"role": "tool", "content": '{"ok": true}', "tool_call_id": call["id"]}], session_id="t",
             max_new_tokens=5)
    assert [m["role"] for m in bot.history("t")] == ["user", "assistant", "tool", "assistant"]
