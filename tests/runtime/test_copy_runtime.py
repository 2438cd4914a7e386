"""The copy channel through the runtime: sessions carry its state through the store and never share it, and
batched decoding with a copy adapter equals decoding alone (a tiny tied-embedding Llama over the real tokenizer,
odd sizes)."""

from __future__ import annotations

import copy

import pytest
import torch

from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.runtime.batched import BatchedDecoder, DecodeJob
from deltamem_agents.runtime.decode import Engine, Generation, GenerationConfig
from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
from deltamem_agents.runtime.window import WindowPolicy
from tests.conftest import randomize_adapter

ATOL = 2e-4


def _tiny_copy_model(**copy_cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltamem_agents.backbone import load_tokenizer, resolve_model_dir
    from deltamem_agents.patching import attach

    tok = load_tokenizer(resolve_model_dir(None))
    torch.manual_seed(2)
    cfg = LlamaConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    adapter = attach(model, DeltaMemConfig(rank=3, num_state_heads=1, write_threshold=0.3, copy_rank=7, **copy_cfg))
    randomize_adapter(adapter, seed=4, scale=0.4)
    with torch.no_grad():
        if adapter.copy.gate_kind == "token":
            adapter.copy.beta.bias.fill_(1.0)
        else:
            adapter.copy.mgate[2].bias.fill_(1.0)
        adapter.copy.gate.bias.fill_(1.0)
        adapter.copy.log_tau.fill_(2.0)
    return model, tok


@pytest.fixture(scope="module")
def copy_model(one_thread):
    return _tiny_copy_model()


@pytest.fixture(scope="module")
def message_gate_model(one_thread):
    return _tiny_copy_model(copy_gate="message", copy_gate_hidden=8)


@pytest.fixture(scope="module")
def token_key_model(one_thread):
    return _tiny_copy_model(copy_gate="message", copy_gate_hidden=8, copy_tok_rank=5)


_FIXTURES = {"token": "copy_model", "message": "message_gate_model", "message+token keys": "token_key_model"}


@pytest.mark.parametrize("gate", list(_FIXTURES))
def test_sessions_keep_their_own_copy_state_through_the_store(gate, request, tmp_path):
    """With either write gate (and with token keys) the copy channel writes through sessions and the SQLite store, sessions keep their own
    copy memory, and a restart reads it back."""
    model, tok = request.getfixturevalue(_FIXTURES[gate])
    db = tmp_path / "s.db"
    policy = WindowPolicy(budget=96, reserve=16)
    bot = DeltaMemChat(model, tok, store=SessionStore(SQLiteBackend(db)), policy=policy)
    bot.chat("My sister is called Daphne.", session_id="a", max_new_tokens=4)
    a = bot.state("a").clone()
    assert a.C is not None and a.C.abs().max() > 0 and a.prev_h.abs().max() > 0
    bot.chat("I live in Lisbon and my number is 4471.", session_id="b", max_new_tokens=4)
    bot.chat("And the dog is Rex.", session_id="b", max_new_tokens=3)  # the window evicts in b
    assert bot.state("a").equal(a)  # b's turns never touch a
    assert not bot.state("b").equal(a)
    again = DeltaMemChat(model, tok, store=SessionStore(SQLiteBackend(db)), policy=policy)  # a restart
    assert again.state("a").equal(a) and again.state("b").equal(bot.state("b"))
    # a fork continues on its own copy memory; the original stays as it was
    again.fork("a", "a-fork")
    again.chat("What is her name?", session_id="a-fork", max_new_tokens=3)
    assert not again.state("a-fork").equal(a) and again.state("a").equal(a)
    blob = bot.store.get("a").state
    assert len(blob) > a.copy_nbytes() > 0


def _cursor(engine: Engine, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    V = engine.model.config.vocab_size
    cur = engine.new_cursor(engine.model.deltamem.zero_state(1))
    if n:
        ids = torch.randint(0, V, (n,), generator=g).tolist()
        engine.forward(cur, ids, [1] * (n // 2) + [-1] * (n - n // 2) if n > 1 else [1])
    return cur


@pytest.mark.parametrize("gate", list(_FIXTURES))
def test_batched_decoding_equals_alone(gate, request):
    """Batched decoding (left-padded prompts) equals decoding alone, with either write gate and with token keys."""
    model, tok = request.getfixturevalue(_FIXTURES[gate])
    V = model.config.vocab_size
    engine = Engine(model, tok, eos_ids=(V + 1,))
    hist, plens, steps = [0, 13, 1, 22], [3, 1, 11, 5], [6, 2, 5, 0]
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in plens]
    solo = [_cursor(engine, n, 100 + b) for b, n in enumerate(hist)]
    solo[2].write = False  # reads its state, writes nothing and keeps its prev_h
    kept = solo[2].state.clone()
    both = [copy.deepcopy(c) for c in solo]
    ref = [engine.generate(c, p, [2] * (len(p) - 1) + [3], 3, GenerationConfig(max_new_tokens=n))
           for c, p, n in zip(solo, prompts, steps)]
    jobs = [DecodeJob(c, p, [2] * (len(p) - 1) + [3], 3, GenerationConfig(max_new_tokens=n))
            for c, p, n in zip(both, prompts, steps)]
    got = BatchedDecoder(model, tok, engine=engine).generate(jobs)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    assert any(c.state.C.abs().max() > 0 for c in solo) and solo[2].state.equal(kept)
    for a, b in zip(solo, both):
        assert a.tokens == b.tokens and a.state.equal(b.state, atol=ATOL)
        la, lb = engine.forward(a, [5], [9]), engine.forward(b, [5], [9])
        assert torch.allclose(la, lb, atol=ATOL, rtol=1e-4)



def test_a_reply_does_not_write_its_own_tokens_into_the_copy_memory(copy_model):
    """Generated tokens move the δ layers' state and the copy channel's key (prev_h), never its memory C: a reply
    copying a remembered value must not then read back its own tokens."""
    model, tok = copy_model
    V = model.config.vocab_size
    engine = Engine(model, tok, eos_ids=(V + 1,))
    cur, prompt_only, as_input = (_cursor(engine, 7, 5) for _ in range(3))
    res = Generation()
    list(engine.decode(cur, engine.forward(cur, [4, 5, 6, 7], [3] * 4), 3, GenerationConfig(max_new_tokens=4),
                       None, res))
    assert res.n_fed == 3
    engine.forward(prompt_only, [4, 5, 6, 7], [3] * 4)
    engine.forward(as_input, [4, 5, 6, 7] + res.token_ids[:3], [3] * 7)  # the same tokens, not generated
    torch.testing.assert_close(cur.state.C, prompt_only.state.C, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(as_input.state.C, prompt_only.state.C, atol=ATOL)  # written, they would change C
    torch.testing.assert_close(cur.state.S, as_input.state.S, atol=ATOL, rtol=1e-4)  # the δ layers wrote them
    torch.testing.assert_close(cur.state.prev_h, as_input.state.prev_h, atol=ATOL, rtol=1e-4)

