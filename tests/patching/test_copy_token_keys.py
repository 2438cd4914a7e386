"""The copy channel's token keys (config.copy_tok_rank) inside δ-mem calls on tiny random Llamas: a per-token
reference spelled out equals the call, calls split anyhow give one pass's state and logits, padding neither writes
nor moves prev_id, a token is read back by the token before it alone, and adapter files carry W_t and α."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deltamem_agents.core import copy as cp
from deltamem_agents.core import fastpath
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from tests.conftest import randomize_adapter
from tests.patching.test_copy_channel import V, _ids, _model, _split, alone_and_padded, read_back_gain

R, RT = 5, 3


def _tok_model(tied: bool = False, seed: int = 0):
    model = _model(tied, seed)
    adapter = attach(model, DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=R, copy_tok_rank=RT))
    randomize_adapter(adapter, seed=seed + 1, scale=0.4)
    with torch.no_grad():
        adapter.copy.beta.bias.fill_(0.5)
        adapter.copy.gate.bias.fill_(1.0)
        adapter.copy.log_tau.fill_(1.5)
    return model, adapter


@pytest.fixture(scope="module")
def tok_model(one_thread):
    return _tok_model()


@pytest.mark.parametrize("fast", [True, False])
def test_the_call_equals_a_per_token_reference(tok_model, fast):
    """Keys [cos α·norm(W_k h_{t-1}), sin α·norm(W_t ê(x_{t-1}))], queries from (h_p, x_p), one delta step per
    written token, logits = base + g·Ê o: spelled out token by token against the call's logits and state."""
    model, adapter = tok_model
    ids, mids = _ids(2, 19, seed=7)
    ch, E = adapter.copy, model.get_input_embeddings().weight
    old = fastpath.set_enabled(fast)
    try:
        with torch.no_grad():
            out = forward_with_state(model, ids, None, message_ids=mids)
    finally:
        fastpath.set_enabled(old)
    h = out.copy.h
    En = F.normalize(E.float(), dim=-1)
    a = ch.mix
    with torch.no_grad():
        base = model.lm_head.base(h)
        for b in range(ids.shape[0]):
            C = torch.zeros(D_ := h.shape[-1], R + RT)
            for t in range(ids.shape[1]):
                if t > 0:
                    k = torch.cat([F.normalize(ch.wk(h[b, t - 1]), dim=-1) * torch.cos(a),
                                   F.normalize(ch.wt(En[ids[b, t - 1]]), dim=-1) * torch.sin(a)])
                    beta = torch.sigmoid(ch.beta(h[b, t - 1])) * float(mids[b, t] >= 0)
                    C = C + beta * torch.outer(En[ids[b, t]] - C @ k, k)
                q = torch.cat([F.normalize(ch.wq(h[b, t]), dim=-1) * torch.cos(a),
                               F.normalize(ch.wt(En[ids[b, t]]), dim=-1) * torch.sin(a)])
                want = base[b, t] + ch.gain(h[b, t]) * (En @ (C @ q))
                torch.testing.assert_close(out.outputs.logits[b, t], want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out.state.C[b], C, rtol=1e-4, atol=1e-5)
    assert D_ == adapter.hidden and out.state.C.abs().max() > 1e-2
    assert out.state.prev_id.tolist() == ids[:, -1].tolist()


def test_split_calls_equal_one_call(tok_model):
    """prev_id carries the token before a call's first token: any split gives one pass's C, prev_h, prev_id and
    logits."""
    model, _ = tok_model
    ids, mids = _ids(2, 23, seed=8)
    with torch.no_grad():
        full = forward_with_state(model, ids, None, message_ids=mids)
        st, logits = _split(model, ids, mids, [0, 6, 7, 15, 16, 17, 23])
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st.C, full.state.C, rtol=1e-4, atol=1e-5)
    assert torch.equal(st.prev_id, full.state.prev_id) and torch.equal(st.prev_id, ids[:, -1])


def test_padding_neither_writes_nor_moves_prev_id(tok_model):
    model, _ = tok_model
    ids, mids = _ids(1, 13, seed=9)
    alone, padded = alone_and_padded(model, ids, mids, 3)
    with torch.no_grad():  # a padded-only call (a row with nothing this step) keeps its last token
        idle = forward_with_state(model, torch.full((1, 2), 3), alone.state, message_ids=torch.zeros(1, 2).long(),
                                  attention_mask=torch.zeros(1, 2, dtype=torch.long), logits_to_keep=1)
    torch.testing.assert_close(padded.state.C, alone.state.C, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.outputs.logits, alone.outputs.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(padded.state.prev_id, alone.state.prev_id)
    assert torch.equal(idle.state.prev_id, alone.state.prev_id)


def test_a_token_is_read_back_by_the_token_before_it(one_thread):
    """With α = π/2 the keys are the token part alone: after "… 17 42 …" a position holding 17 reads 42."""
    model = _model(seed=7)
    adapter = attach(model, DeltaMemConfig(rank=3, output_init="zero", copy_rank=4, copy_tok_rank=8))
    with torch.no_grad():
        adapter.copy.mix.fill_(math.pi / 2)
    gain = read_back_gain(model, adapter, [5, 17, 42, 9, 33, 17])
    assert int(gain.argmax()) == 42 and gain[42] > 1.0


def test_adapter_files_carry_the_token_keys(tok_model, tmp_path):
    model, adapter = tok_model
    save_adapter(model, tmp_path / "a")
    from safetensors.torch import load_file

    keys = {k for k in load_file(str(tmp_path / "a" / "adapter.safetensors")) if k.startswith("copy.")}
    assert keys == {f"copy.{n}" for n in cp.copy_params("token", tokens=True)}
    assert {"copy.wt.weight", "copy.mix"} <= keys
    other = _model(seed=0)
    loaded = load_adapter(other, tmp_path / "a")
    assert loaded.config.copy_tok_rank == RT and loaded.copy_dims == (adapter.hidden, R + RT, True)
    ids, mids = _ids(1, 9, seed=5)
    with torch.no_grad():
        a = forward_with_state(model, ids, None, message_ids=mids)
        b = forward_with_state(other, ids, None, message_ids=mids)
    assert torch.equal(a.outputs.logits, b.outputs.logits) and a.state.equal(b.state)
    no_tok = attach(_model(), DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=R)).state_bytes()
    assert adapter.state_bytes() - no_tok == 4 * adapter.hidden * RT + 8 == adapter.copy.state_bytes() - \
        cp.CopyChannel(adapter.hidden, R).state_bytes()
    assert V == model.config.vocab_size
