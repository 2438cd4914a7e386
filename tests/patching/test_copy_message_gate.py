"""The copy channel's message write gate inside δ-mem calls (a tiny random Llama): a conversation fed in one call
or message by message (each message whole in its call) gives the same state and logits, and both equal a per-token
reference computed from the hidden states; a message split across calls is gated slice by slice (each slice's own
mean and last token); the adapter file carries the gate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltamem_agents.core import copy as cp
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, read_adapter_config, save_adapter
from tests.conftest import randomize_adapter
from tests.patching.test_copy_channel import V, _model, _split

CFG = DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=5, copy_gate="message", copy_gate_hidden=12)
BOUNDS = [0, 3, 8, 15, 16, 24, 29]  # a 3-token "system prompt" (id -1), then messages 0..4 (one of one token)


@pytest.fixture(scope="module")
def gated(one_thread):
    model = _model(seed=11)
    adapter = attach(model, CFG)
    randomize_adapter(adapter, seed=12, scale=0.4)
    with torch.no_grad():  # gates spread over (0, 1), a read that shows in the logits
        g = torch.Generator().manual_seed(13)
        for lin in (adapter.copy.mgate[0], adapter.copy.mgate[2]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.8)
        adapter.copy.mgate[2].bias.fill_(0.0)
        adapter.copy.gate.bias.fill_(1.0)
        adapter.copy.log_tau.fill_(1.5)
    g = torch.Generator().manual_seed(14)
    ids = torch.randint(0, V, (2, BOUNDS[-1]), generator=g)
    mids = torch.cat([torch.full((BOUNDS[i + 1] - BOUNDS[i],), i - 1) for i in range(len(BOUNDS) - 1)])
    with torch.no_grad():
        full = forward_with_state(model, ids, None, message_ids=mids.repeat(2, 1))
    return model, adapter, ids, mids.repeat(2, 1), full


def _ref_state(model, adapter, h, ids, groups, written):
    """C after writing every position with the message gate, spelled out per token from the final normed hidden
    states h [B, T, d] of one pass; `groups`: the position lists gated together (a message, or a message's slice
    in one call). Returns (C, β)."""
    ch = adapter.copy
    B, T, d = h.shape
    h_prev = torch.cat([torch.zeros(B, 1, d), h[:, :-1]], 1)  # a fresh state's prev_h is zero
    x = torch.zeros(B, T, 3 * d)
    for pos in groups:
        for t in pos:
            x[:, t, :d] = h_prev[:, t]
            x[:, t, d:2 * d] = 0.0 if t == pos[-1] else h[:, t]
            x[:, t, 2 * d:] = h_prev[:, pos].mean(1)
    beta = torch.sigmoid(ch.mgate(x)).squeeze(-1) * written
    k = F.normalize(h_prev @ ch.wk.weight.T, dim=-1)
    v = F.normalize(model.get_input_embeddings().weight[ids], dim=-1)
    C = torch.zeros(B, d, ch.rank)
    for t in range(T):
        err = v[:, t] - torch.einsum("bdr,br->bd", C, k[:, t])
        C = C + beta[:, t, None, None] * torch.einsum("bd,br->bdr", err, k[:, t])
    return C, beta


def test_whole_messages_in_any_calls_equal_one_call_and_the_reference(gated):
    model, adapter, ids, mids, full = gated
    groups = [list(range(a, b)) for a, b in zip(BOUNDS[:-1], BOUNDS[1:])]
    with torch.no_grad():
        want, beta = _ref_state(model, adapter, full.copy.h, ids, groups, (mids >= 0).float())
        per_msg, logits = _split(model, ids, mids, BOUNDS)
        grouped, _ = _split(model, ids, mids, [0, 8, 16, 29])
    written = beta[mids >= 0]
    assert written.min() < 0.3 and written.max() > 0.7  # the gate discriminates
    assert full.state.C.abs().max() > 1e-2
    torch.testing.assert_close(full.state.C, want, rtol=1e-4, atol=1e-5)
    for st in (per_msg, grouped):
        torch.testing.assert_close(st.C, full.state.C, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(st.prev_h, full.state.prev_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-5)


def test_a_message_split_across_calls_is_gated_per_slice(gated):
    """Message 1 (positions 8..14) cut at 11: each slice has its own mean and its own last token, so the state is
    the reference with the slices as groups, not the one-call state."""
    model, adapter, ids, mids, full = gated
    cuts = [0, 3, 11, 29]
    groups = [list(range(a, b)) for a, b in zip(BOUNDS[:-1], BOUNDS[1:]) if b <= 8 or a >= 15]
    groups += [list(range(8, 11)), list(range(11, 15))]
    with torch.no_grad():
        st, _ = _split(model, ids, mids, cuts)
        want, _ = _ref_state(model, adapter, full.copy.h, ids, groups, (mids >= 0).float())
    torch.testing.assert_close(st.C, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(st.C, full.state.C, rtol=1e-4, atol=1e-4)


def test_message_gate_adapter_round_trip(gated, tmp_path):
    model, adapter, ids, mids, full = gated
    save_adapter(model, tmp_path / "a")
    from safetensors.torch import load_file

    keys = {k for k in load_file(str(tmp_path / "a" / "adapter.safetensors")) if k.startswith("copy.")}
    assert keys == {f"copy.{n}" for n in cp.copy_params("message")}
    assert read_adapter_config(tmp_path / "a")["config"] == CFG
    other = _model(seed=11)
    loaded = load_adapter(other, tmp_path / "a")
    assert loaded.config == CFG.replace(target_layers=(0, 1)) and loaded.copy.gate_kind == "message"
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        b = forward_with_state(other, ids, None, message_ids=mids)
    assert torch.equal(b.outputs.logits, full.outputs.logits) and b.state.equal(full.state)
