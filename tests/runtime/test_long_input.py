"""Messages longer than the visible window are accepted: written in full, logged whole, shown by their newest part."""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.runtime.decode import Engine
from tests.conftest import tiny_ssw_on_real_tokenizer

LONG = " ".join(f"Item {i}: the parcel for flat {i * 7 % 13} goes to the {('red', 'blue', 'green')[i % 3]} door."
                for i in range(40))


@pytest.fixture(scope="module")
def bots(one_thread):
    model, tok = tiny_ssw_on_real_tokenizer()
    small = DeltaMemChat(model, tok, in_memory=True, budget=96, reserve=16, system_prompt="Be brief.")
    big = small.on_same_weights(budget=4096, reserve=16)
    return small, big


def test_a_message_longer_than_the_window_is_written_whole(bots):
    small, big = bots
    r = small.runner.renderer(small.system_prompt)
    block = r.message_ids({"role": "user", "content": LONG})
    assert len(block) > 3 * small.policy.budget
    small.add_messages([{"role": "user", "content": LONG}], session_id="add")
    big.add_messages([{"role": "user", "content": LONG}], session_id="add")
    assert small.history("add") == [{"role": "user", "content": LONG}]
    # naive reference: one pass over the system prompt (re-read) and the whole block (written) from an empty state
    engine = Engine(small.model, small.tokenizer)
    cur = engine.new_cursor(small.adapter.zero_state(1))
    engine.forward(cur, list(r.system_ids) + block, [-1] * len(r.system_ids) + [0] * len(block))
    for other in (small.state("add"), big.state("add")):  # the big window writes the same tokens in one go
        torch.testing.assert_close(other.S, cur.state.S, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(other.pend_sum, cur.state.pend_sum, rtol=1e-4, atol=1e-4)
    # the window shows the block's header and its newest tokens, within the budget
    conv = small._conversation("add")
    room = small.policy.budget - small.policy.reserve - len(r.system_ids)
    head = r.content_prefix_len("user")
    assert conv.cursor.tokens == list(r.system_ids) + block[:head] + block[len(block) - (room - head):]


def test_a_long_turn_gets_a_reply_and_a_rebuilt_window_matches_the_live_one(bots):
    small, _ = bots
    replies = {}
    for sid in ("live", "reloaded"):
        a = small.chat(LONG, session_id=sid, max_new_tokens=4)
        assert a.finish_reason in ("stop", "length") and a.usage["completion_tokens"] >= 1
        assert a.usage["prompt_tokens"] <= small.policy.budget
        assert small.history(sid)[0] == {"role": "user", "content": LONG}
    small.live.forget("reloaded")  # as after a restart: the window's KV cache is rebuilt from the log
    for sid in ("live", "reloaded"):
        replies[sid] = small.chat("And the red door?", session_id=sid, max_new_tokens=4)
    assert replies["live"].text == replies["reloaded"].text
    torch.testing.assert_close(small.state("live").S, small.state("reloaded").S, rtol=1e-4, atol=1e-5)
    assert len(small.history("live")) == 4
