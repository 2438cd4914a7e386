"""The optimised decode loop (growing KV cache + δ-mem fast path) against the unoptimised one (transformers'
DynamicCache + the reference δ-mem step): identical greedy replies over the real tokenizer, tiny models; the
growing cache against DynamicCache through crop / batch selection at odd sizes; one short real-model check."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from deltamem_agents.core import fastpath
from deltamem_agents.core.config import tsw
from deltamem_agents.runtime.decode import Engine, GenerationConfig
from deltamem_agents.runtime.kv_cache import GrowingLayer, growing_cache
from tests.conftest import randomize_adapter, tiny_ssw_on_real_tokenizer


def _tiny_tsw_on_real_tokenizer():
    """The tiny SSW model's backbone and tokenizer, with a TSW adapter like the shipped one (threshold, centring)."""
    from deltamem_agents.patching import attach, detach

    model, tok = tiny_ssw_on_real_tokenizer()
    detach(model)
    adapter = attach(model, tsw(rank=8, state_update_mode="no_lambda", write_threshold=0.45, center_inputs=True))
    randomize_adapter(adapter, seed=4, scale=0.6)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.beta_bias.add_(1.0)  # gates around the threshold: some tokens written, some not
    return model, tok


def _conversation(engine: Engine, tok, turns: int = 2, new: int = 12) -> tuple[list[list[int]], torch.Tensor]:
    """Two greedy turns on one cursor (the second reuses the KV cache and state); replies and final S."""
    cur = engine.new_cursor(engine.model.deltamem.zero_state(1))
    replies = []
    for t in range(turns):
        ids = tok(f"<|im_start|>user\nTurn {t}: the code word is heron{t}.<|im_end|>\n<|im_start|>assistant\n")[
            "input_ids"]
        res = engine.generate(cur, ids, [2 * t] * len(ids), 2 * t + 1, GenerationConfig(max_new_tokens=new))
        replies.append(res.token_ids)
        if res.n_fed < len(res.token_ids):
            engine.forward(cur, res.token_ids[res.n_fed :], [2 * t + 1] * (len(res.token_ids) - res.n_fed))
    return replies, cur.state.S


@pytest.mark.parametrize("make", [tiny_ssw_on_real_tokenizer, _tiny_tsw_on_real_tokenizer], ids=["ssw", "tsw"])
def test_greedy_replies_identical_to_unoptimised_loop(make, one_thread):
    model, tok = make()
    old = fastpath.set_enabled(False)
    try:
        ref, ref_S = _conversation(Engine(model, tok, growing_kv=False), tok)
    finally:
        fastpath.set_enabled(old)
    fast, fast_S = _conversation(Engine(model, tok), tok)
    assert fast == ref
    assert sum(len(r) for r in ref) > 8
    torch.testing.assert_close(fast_S, ref_S, atol=1e-5, rtol=1e-4)
    assert ref_S.abs().sum() > 0


def test_growing_cache_matches_dynamic_cache_through_crop_and_batch_selection():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=12, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3)
    grow, ref = growing_cache(cfg), DynamicCache(config=cfg)
    assert all(isinstance(layer, GrowingLayer) for layer in grow.layers)
    g = torch.Generator().manual_seed(0)

    def feed(t: int, b: int) -> None:
        for i in range(2):
            k, v = torch.randn(b, 3, t, 5, generator=g), torch.randn(b, 3, t, 5, generator=g)
            got, want = grow.update(k, v, i), ref.update(k, v, i)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    feed(7, 3)
    for _ in range(300):  # past the first capacity (256): one reallocation
        feed(1, 3)
    grow.crop(-5)
    ref.crop(-5)
    feed(3, 3)
    idx = torch.tensor([2, 0])
    grow.batch_select_indices(idx)
    ref.batch_select_indices(idx)
    feed(1, 2)
    feed(4, 2)
    assert grow.get_seq_length() == ref.get_seq_length() == 7 + 300 - 5 + 3 + 1 + 4


def test_real_model_greedy_reply_identical(one_thread):
    """The shipped adapter on the real backbone: one short greedy reply, optimised vs unoptimised loop."""
    from deltamem_agents.chat.loading import load_model

    model, tok = load_model(device="cpu")
    ids = tok("<|im_start|>user\nMy dog is called Rex and I live in Lyon. Where do I live?<|im_end|>\n"
              "<|im_start|>assistant\n")["input_ids"]
    out = []
    for fast in (False, True):
        old = fastpath.set_enabled(fast)
        try:
            engine = Engine(model, tok, growing_kv=fast)
            cur = engine.new_cursor(model.deltamem.zero_state(1))
            out.append(engine.generate(cur, ids, [0] * len(ids), 1, GenerationConfig(max_new_tokens=16)).token_ids)
        finally:
            fastpath.set_enabled(old)
    assert out[0] == out[1] and len(out[0]) > 3
