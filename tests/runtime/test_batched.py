"""Batched decoding equals decoding each conversation alone (tiny random models over the real tokenizer)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from deltamem_agents.core.config import msw
from deltamem_agents.core.state import DeltaState
from deltamem_agents.patching import attach
from deltamem_agents.runtime.batched import BatchedDecoder, DecodeJob, Turn, TurnBatcher, respond_batch
from deltamem_agents.runtime.decode import Engine, Generation, GenerationConfig
from deltamem_agents.runtime.session import Conversation, SessionRunner
from deltamem_agents.runtime.window import WindowPolicy
from tests.conftest import randomize_adapter, tiny_ssw_on_real_tokenizer

ATOL = 2e-4


def _tiny_tsw():
    """A random 2-layer Llama over the real tokenizer with a token-write adapter at odd sizes (3 heads, rank 5)
    and selective writes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltamem_agents.backbone import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir(None))
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    randomize_adapter(attach(model, msw(rank=5, num_state_heads=3, write_threshold=0.3)), seed=5, scale=0.4)
    return model, tok


@pytest.fixture(scope="module")
def tsw_model(one_thread):
    return _tiny_tsw()


@pytest.fixture(scope="module")
def ssw_model(one_thread):
    return tiny_ssw_on_real_tokenizer()


def _random_state(engine: Engine, seed: int, pending: bool) -> DeltaState:
    from deltamem_agents.patching.attach import get_adapter

    g = torch.Generator().manual_seed(seed)
    st = get_adapter(engine.model).zero_state(1)
    st.S.copy_(torch.randn(st.S.shape, generator=g) * 0.3)
    if pending and st.pend_sum.numel():  # an open message (id 0) carried in
        st.pend_sum.copy_(torch.randn(st.pend_sum.shape, generator=g))
        st.pend_count.fill_(3.0)
        st.pend_id.fill_(0)
    return st


def _cursors(engine: Engine, hist_lens: list[int], pending: bool):
    """One cursor per row with a random state and a random history of the given length already fed."""
    g = torch.Generator().manual_seed(7)
    V = engine.model.config.vocab_size
    curs = []
    for b, n in enumerate(hist_lens):
        cur = engine.new_cursor(_random_state(engine, 100 + b, pending))
        if n:
            ids = torch.randint(0, V, (n,), generator=g).tolist()
            engine.forward(cur, ids, [1] * (n // 2) + [-1] * (n - n // 2) if n > 1 else [1])
        curs.append(cur)
    return curs


def _prompts(V: int, lens: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lens]


def _alone(engine, curs, prompts, cfgs, base_mid=2):
    out = []
    for cur, p, cfg in zip(curs, prompts, cfgs):
        res = engine.generate(cur, p, [base_mid] * (len(p) - 1) + [base_mid + 1], base_mid + 1, cfg)
        out.append(res)
    return out


def _batched(dec, curs, prompts, cfgs, base_mid=2, stream=None):
    jobs = [DecodeJob(cur, p, [base_mid] * (len(p) - 1) + [base_mid + 1], base_mid + 1, cfg,
                      on_text=(stream[b].append if stream is not None else None))
            for b, (cur, p, cfg) in enumerate(zip(curs, prompts, cfgs))]
    return dec.generate(jobs)


def _same_cursor(engine, a, b):
    assert a.tokens == b.tokens
    assert a.state.equal(b.state, atol=ATOL)
    la, lb = engine.forward(a, [5], [9]), engine.forward(b, [5], [9])  # the caches continue alike
    assert torch.allclose(la, lb, atol=ATOL, rtol=1e-4)
    assert a.state.equal(b.state, atol=ATOL)


@pytest.mark.parametrize("kind", ["tsw", "ssw"])
def test_batched_equals_alone(kind, tsw_model, ssw_model):
    model, tok = tsw_model if kind == "tsw" else ssw_model
    hist = [0, 13, 1, 29, 6]
    plens = [3, 1, 17, 5, 9]
    V = model.config.vocab_size
    probe = Engine(model, tok, eos_ids=(V + 1,))  # no EOS: learn each row's tokens first
    free = _alone(probe, _cursors(probe, hist, kind == "ssw"), _prompts(V, plens),
                  [GenerationConfig(max_new_tokens=9)] * len(hist))
    eos = (free[1].token_ids[2], free[3].token_ids[0])  # rows 1 and 3 (at least) finish early on EOS
    engine = Engine(model, tok, eos_ids=eos, growing_kv=kind == "ssw")  # both KV cache kinds
    cfgs = [GenerationConfig(max_new_tokens=n) for n in (9, 12, 1, 7, 0)]
    solo = _cursors(engine, hist, kind == "ssw")
    both = [copy.deepcopy(c) for c in solo]
    ref = _alone(engine, solo, _prompts(V, plens), cfgs)
    streamed: list[list[str]] = [[] for _ in hist]
    got = _batched(BatchedDecoder(model, tok, engine=engine), both, _prompts(V, plens), cfgs, stream=streamed)
    assert any(r.finish_reason == "stop" for r in ref) and any(r.finish_reason == "length" for r in ref)
    assert len({len(r.token_ids) for r in ref}) >= 3  # rows of very different lengths
    for r, g, s in zip(ref, got, streamed):
        assert (g.token_ids, g.finish_reason, g.n_fed, g.text) == (r.token_ids, r.finish_reason, r.n_fed, r.text)
        assert "".join(s) == r.text
    for a, b in zip(solo, both):
        _same_cursor(engine, a, b)


def test_batched_forward_and_sampling(tsw_model):
    """The plain batched forward matches `Engine.forward`, and seeded sampling / stop strings / write=False
    rows behave as alone."""
    model, tok = tsw_model
    engine = Engine(model, tok)
    dec = BatchedDecoder(model, tok, engine=engine)
    hist, V = [4, 0, 11], model.config.vocab_size
    solo = _cursors(engine, hist, False)
    solo[2].write = False
    both = [copy.deepcopy(c) for c in solo]
    prompts = _prompts(V, [2, 6, 1])
    ref = torch.stack([engine.forward(c, p, [3] * len(p)) for c, p in zip(solo, prompts)])
    got = dec.forward(both, prompts, [[3] * len(p) for p in prompts])
    assert torch.allclose(ref, got, atol=ATOL, rtol=1e-4)
    for a, b in zip(solo, both):
        assert a.tokens == b.tokens and a.state.equal(b.state, atol=ATOL)
    cfgs = [GenerationConfig(max_new_tokens=6, temperature=0.9, top_k=50, seed=s) for s in (1, 2, 3)]
    text = _alone(Engine(model, tok, eos_ids=(V + 1,)), [copy.deepcopy(c) for c in solo], prompts, cfgs)
    cfgs[1] = GenerationConfig(max_new_tokens=6, temperature=0.9, top_k=50, seed=2, stop=(text[1].text[-2:],))
    ref = _alone(engine, solo, prompts, cfgs)
    got = _batched(dec, both, prompts, cfgs)
    assert [g.token_ids for g in got] == [r.token_ids for r in ref]
    assert [g.text for g in got] == [r.text for r in ref]
    for a, b in zip(solo, both):
        _same_cursor(engine, a, b)


def test_bad_batches_are_refused(tsw_model):
    model, tok = tsw_model
    engine = Engine(model, tok)
    dec = BatchedDecoder(model, tok, engine=engine)
    cur = engine.new_cursor(_random_state(engine, 1, False))
    with pytest.raises(ValueError, match="twice"):
        dec.forward([cur, cur], [[1], [2]], [[0], [0]])
    with pytest.raises(ValueError, match="non-empty"):
        dec.forward([cur], [[]], [[]])
    with pytest.raises(ValueError, match="mixes"):
        dec.forward([cur, engine.new_cursor(None)], [[1], [2]], [[0], [0]])
    assert cur.tokens == [] and dec.generate([]) == []


POLICY = WindowPolicy(budget=96, reserve=16)
SYSTEM = "You are a helpful assistant."


def _convs(runner, n):
    from deltamem_agents.patching.attach import get_adapter

    convs = []
    for i in range(n):
        conv = Conversation(f"s{i}", state=get_adapter(runner.engine.model).zero_state(1), system_prompt=SYSTEM)
        if i % 2:  # some history first (odd rows), with different lengths
            runner.add(conv, [{"role": "user", "content": "hello " * (3 * i)},
                              {"role": "assistant", "content": "hi there " * i}])
        convs.append(conv)
    return convs


def _turns(i, k):
    return [{"role": "user", "content": f"turn {k} of session {i}: " + "tell me more " * ((i * 5 + k) % 7)}]


def test_respond_batch_equals_serial_turns(ssw_model):
    """Whole session turns (window, prefill, decode, commit; evictions included) batched == serial."""
    model, tok = ssw_model
    runner = SessionRunner(Engine(model, tok), POLICY)
    dec = BatchedDecoder(model, tok, engine=runner.engine)
    serial, batched = _convs(runner, 4), _convs(runner, 4)
    for k in range(3):  # turns pile up until the window evicts
        cfgs = [GenerationConfig(max_new_tokens=3 + 2 * i) for i in range(4)]
        ref = []
        for i, conv in enumerate(serial):
            res = Generation()
            list(runner.respond(conv, _turns(i, k), cfgs[i], None, res))
            ref.append(res)
        turns = [Turn(conv, _turns(i, k), cfgs[i]) for i, conv in enumerate(batched)]
        respond_batch(runner, dec, turns)
        for r, t in zip(ref, turns):
            assert t.error is None
            assert (t.result.token_ids, t.result.prompt_tokens, t.result.finish_reason) == \
                   (r.token_ids, r.prompt_tokens, r.finish_reason)
    for a, b in zip(serial, batched):
        assert a.messages == b.messages and a.window_start == b.window_start
        assert a.state.equal(b.state, atol=ATOL)
        assert a.cursor.tokens == b.cursor.tokens
    assert any(c.window_start > 0 for c in serial)


def test_bad_turn_fails_alone(ssw_model):
    model, tok = ssw_model
    runner = SessionRunner(Engine(model, tok), POLICY)
    dec = BatchedDecoder(model, tok, engine=runner.engine)
    good, bad = _convs(runner, 2)
    before = (list(bad.messages), bad.state.clone())
    turns = [Turn(good, _turns(0, 0), GenerationConfig(max_new_tokens=2)),
             Turn(bad, [{"role": "user", "content": "fine"}, {"role": "system", "content": "not here"}],
                  GenerationConfig(max_new_tokens=2))]
    respond_batch(runner, dec, turns)
    assert turns[0].error is None and turns[0].result.token_ids
    assert "system" in str(turns[1].error)
    assert bad.messages == before[0] and bad.state.equal(before[1])


def test_a_message_longer_than_the_window_is_taken_in_a_batch_as_alone(ssw_model):
    """Batched turns follow `respond`'s long-input rule (written in full, newest part shown), not a refusal."""
    model, tok = ssw_model
    runner = SessionRunner(Engine(model, tok), POLICY)
    dec = BatchedDecoder(model, tok, engine=runner.engine)
    long_turn = [{"role": "user", "content": "parcel " * 150}]
    serial, batched = _convs(runner, 2), _convs(runner, 2)
    ref = []
    for i, conv in enumerate(serial):
        res = Generation()
        list(runner.respond(conv, long_turn if i else _turns(i, 0), GenerationConfig(max_new_tokens=3), None, res))
        ref.append(res)
    turns = [Turn(conv, long_turn if i else _turns(i, 0), GenerationConfig(max_new_tokens=3))
             for i, conv in enumerate(batched)]
    respond_batch(runner, dec, turns)
    for r, t, a, b in zip(ref, turns, serial, batched):
        assert t.error is None and t.result.token_ids == r.token_ids
        assert a.messages == b.messages and a.cursor.tokens == b.cursor.tokens
        assert a.state.equal(b.state, atol=ATOL)
    assert batched[1].messages[-2] == long_turn[0]


def test_turn_batcher_runs_concurrent_turns_together(ssw_model):
    model, tok = ssw_model
    runner = SessionRunner(Engine(model, tok), POLICY)
    serial, shared = _convs(runner, 4), _convs(runner, 4)
    cfg = GenerationConfig(max_new_tokens=4)
    ref = [runner.respond(c, _turns(i, 0), cfg) for i, c in enumerate(serial)]
    ref_text = ["".join(r) for r in ref]
    batcher = TurnBatcher(runner, max_batch=8, wait_ms=200.0)
    out: dict[int, str] = {}
    start = threading.Barrier(4)

    def worker(i):
        start.wait()
        out[i] = "".join(batcher.respond(shared[i], _turns(i, 0), cfg))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert [out[i] for i in range(4)] == ref_text
    assert max(batcher.batches) > 1
    for a, b in zip(serial, shared):
        assert a.messages == b.messages and a.state.equal(b.state, atol=ATOL)
