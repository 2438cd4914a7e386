"""The copy channel inside δ-mem calls (patching/copy_hooks.py) on tiny random Llamas: calls split anyhow give
the same state and logits, a zero channel changes nothing, a written token is read back, the tied fast read and the
reference agree, padding neither writes nor moves prev_h, and outside a call everything is the backbone."""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core import fastpath
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach, detach, disabled, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from deltamem_agents.patching.copy_hooks import CopyLMHead
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache
from tests.conftest import randomize_adapter

V, D, R = 97, 48, 5


def _model(tied: bool = False, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=D, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=V, max_position_embeddings=256, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def _copy_model(tied: bool = False, rank: int = R, seed: int = 0):
    model = _model(tied, seed)
    adapter = attach(model, DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=rank))
    randomize_adapter(adapter, seed=seed + 1, scale=0.4)
    with torch.no_grad():  # a channel that writes and reads noticeably
        adapter.copy.beta.bias.fill_(0.5)
        adapter.copy.gate.bias.fill_(1.0)
        adapter.copy.log_tau.fill_(1.5)
    return model, adapter


def _ids(B: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mids = (torch.arange(T) // 4).repeat(B, 1)
    mids[:, :3] = -1  # a "system prompt": read, keyed, never written
    return ids, mids


@pytest.fixture(scope="module")
def untied(one_thread):
    return _copy_model(tied=False)


@pytest.fixture(scope="module")
def tied(one_thread):
    return _copy_model(tied=True, seed=3)


def _split(model, ids, mids, cuts, keep=0):
    from transformers import DynamicCache

    cache, st, logits = DynamicCache(config=model.config), None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        o = forward_with_state(model, ids[:, a:b], st, message_ids=mids[:, a:b], **cache_kwargs(model, cache),
                               use_cache=True, logits_to_keep=keep)
        st, cache = o.state, output_cache(o.outputs)
        logits.append(o.outputs.logits)
    return st, logits


@pytest.mark.parametrize("fast", [True, False])
def test_split_calls_equal_one_call(untied, fast):
    """prev_h carries the key of a call's first token: any split gives one pass's C, prev_h and logits."""
    model, _ = untied
    ids, mids = _ids(2, 29)
    old = fastpath.set_enabled(fast)
    try:
        with torch.no_grad():
            full = forward_with_state(model, ids, None, message_ids=mids)
            st, logits = _split(model, ids, mids, [0, 7, 16, 17, 18] + list(range(19, 30)))
            st1, last = _split(model, ids, mids, [0, 11, 12, 20, 29], keep=1)  # only the last logits
    finally:
        fastpath.set_enabled(old)
    assert full.state.C.abs().max() > 1e-2
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-5)
    for s in (st, st1):
        torch.testing.assert_close(s.C, full.state.C, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.prev_h, full.state.prev_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last[-1][:, -1], full.outputs.logits[:, -1], rtol=1e-4, atol=1e-5)


def test_zero_channel_changes_nothing(one_thread):
    """Zero copy weights (nothing written) or a zero state with a zero gain: logits bit-identical to the same
    adapter without a copy channel, and outside a call the wrappers are the backbone."""
    ids, mids = _ids(2, 13, seed=1)
    plain_model = _model(seed=5)
    plain = attach(plain_model, DeltaMemConfig(rank=3, write_threshold=0.3))
    randomize_adapter(plain, seed=6, scale=0.4)
    model = _model(seed=5)
    adapter = attach(model, DeltaMemConfig(rank=3, write_threshold=0.3, copy_rank=R))
    adapter.load_state_dict({**adapter.state_dict(), **plain.state_dict()})
    with torch.no_grad():
        adapter.copy.wk.weight.zero_()  # k = 0: nothing is written
        for fast in (True, False):
            old = fastpath.set_enabled(fast)
            try:
                want = forward_with_state(plain_model, ids, None, message_ids=mids).outputs.logits
                got = forward_with_state(model, ids, None, message_ids=mids)
            finally:
                fastpath.set_enabled(old)
            assert torch.equal(got.outputs.logits, want) and not got.state.C.any()
        base = model(input_ids=ids).logits  # outside a call
        with disabled():
            off = forward_with_state(model, ids, None, message_ids=mids).outputs.logits
    detach(model)
    assert not isinstance(model.lm_head, CopyLMHead)
    with torch.no_grad():
        assert torch.equal(base, model(input_ids=ids).logits) and torch.equal(off, base)


def test_a_written_token_is_read_back(one_thread):
    """β large, W_q = W_k: after writing token x at a position keyed like the reading one, x's logit rises."""
    model = _model(seed=7)
    adapter = attach(model, DeltaMemConfig(rank=3, output_init="zero", copy_rank=8))
    with torch.no_grad():
        adapter.copy.wq.weight.copy_(adapter.copy.wk.weight)
    # the last position (token 17) reads with the key that wrote 42 (the token after the first 17)
    gain = read_back_gain(model, adapter, [5, 17, 42, 9, 17])
    assert int(gain.argmax()) == 42 and gain[42] > 1.0


def read_back_gain(model, adapter, ids: list[int]):
    """With a strong write gate and read gain: the last position's logits after writing `ids` minus without
    writing them."""
    x = torch.tensor([ids])
    with torch.no_grad():
        adapter.copy.beta.bias.fill_(20.0)
        adapter.copy.gate.bias.fill_(2.0)
        before = forward_with_state(model, x, None, message_ids=torch.full_like(x, -1)).outputs.logits
        out = forward_with_state(model, x, None, message_ids=torch.zeros_like(x))
    return out.outputs.logits[0, -1] - before[0, -1]


def test_tied_fast_read_equals_the_reference(tied):
    model, adapter = tied
    assert model.lm_head.tied
    ids, mids = _ids(3, 21, seed=2)
    with torch.no_grad():
        pre = forward_with_state(model, ids[:, :15], None, message_ids=mids[:, :15]).state
        outs = {}
        for fast in (True, False):
            old = fastpath.set_enabled(fast)
            try:
                outs[fast] = [forward_with_state(model, ids[:, 15:], pre, message_ids=mids[:, 15:],
                                                 logits_to_keep=k) for k in (1, 0)]
            finally:
                fastpath.set_enabled(old)
        # the reference spelled out: base logits + g·Ê o with Ê materialised
        import torch.nn.functional as F

        o = outs[False][0]
        h = o.copy.h[:, -1:]
        E = model.get_input_embeddings().weight
        read = adapter.copy.gain(h) * torch.einsum("bdr,bkr->bkd", o.state.C, adapter.copy.query(h))
        ref = F.linear(h, E) + read @ F.normalize(E, dim=-1).T
    for k in (0, 1):
        torch.testing.assert_close(outs[True][k].outputs.logits, outs[False][k].outputs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[True][0].outputs.logits, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[False][1].outputs.logits[:, -1:], ref, rtol=1e-5, atol=1e-5)


def alone_and_padded(model, ids, mids, pad: int):
    """One row's call alone and the same row left-padded by `pad` (padding in the prompt too), last logits only."""
    T = ids.shape[1]
    with torch.no_grad():
        alone = forward_with_state(model, ids, None, message_ids=mids, logits_to_keep=1)
        x = torch.cat([torch.full((1, pad), 3), ids], 1)
        m = torch.cat([torch.zeros(1, pad, dtype=torch.long), mids], 1)
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(ids)], 1)
        pos = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.arange(T)[None]], 1)
        padded = forward_with_state(model, x, None, message_ids=m, attention_mask=mask, position_ids=pos,
                                    logits_to_keep=1)
    return alone, padded


def test_padding_neither_writes_nor_moves_prev_h(untied):
    """A left-padded row (padding in the prompt too) gives the state and last logits of the row alone."""
    model, adapter = untied
    ids, mids = _ids(1, 17, seed=3)
    alone, padded = alone_and_padded(model, ids, mids, 4)
    torch.testing.assert_close(padded.state.C, alone.state.C, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.state.prev_h, alone.state.prev_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.outputs.logits, alone.outputs.logits, rtol=1e-4, atol=1e-4)


def test_read_only_call_and_skip_lm_head(untied):
    """write=False leaves the state as it was; skip_lm_head calls expose the read for logits made later."""
    model, adapter = untied
    ids, mids = _ids(2, 12, seed=4)
    with torch.no_grad():
        st = forward_with_state(model, ids, None, message_ids=mids).state
        ro = forward_with_state(model, ids, st, message_ids=mids, write=False)
        assert ro.state is st
        full = forward_with_state(model, ids[:, :9], st, message_ids=mids[:, :9])
    part = forward_with_state(model, ids[:, :9], st, message_ids=mids[:, :9], skip_lm_head=True)
    h = part.outputs.last_hidden_state
    got = part.copy.apply(model.lm_head(h[:, 2:]))  # the last 7 positions, the lm_head outside the call
    got.sum().backward()  # differentiable in the channel's parameters
    assert adapter.copy.wq.weight.grad is not None and adapter.copy.wk.weight.grad is not None
    adapter.zero_grad(set_to_none=True)
    torch.testing.assert_close(got.detach(), full.outputs.logits[:, 2:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part.state.C.detach(), full.state.C, rtol=1e-5, atol=1e-6)


def test_adapter_files_carry_the_copy_channel(untied, tmp_path):
    model, adapter = untied
    save_adapter(model, tmp_path / "a")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "a" / "adapter.safetensors")))
    assert {k for k in keys if k.startswith("copy.")} == {f"copy.{n}" for n in
                                                          ("wk.weight", "wq.weight", "beta.weight", "beta.bias",
                                                           "gate.weight", "gate.bias", "log_tau")}
    other = _model(seed=0)
    loaded = load_adapter(other, tmp_path / "a")
    assert loaded.config.copy_rank == R and isinstance(other.lm_head, CopyLMHead)
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids, mids = _ids(1, 10, seed=5)
    with torch.no_grad():
        a = forward_with_state(model, ids, None, message_ids=mids)
        b = forward_with_state(other, ids, None, message_ids=mids)
    assert torch.equal(a.outputs.logits, b.outputs.logits) and a.state.equal(b.state)
    assert adapter.state_bytes() - attach(_model(), DeltaMemConfig(rank=3)).state_bytes() == 4 * D * (R + 1)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma3_text"])
def test_every_registered_architecture(arch, one_thread):
    """The final norm and the LM head are found for each architecture: calls split anyhow equal one pass, and
    detach gives the backbone back."""
    from tests.patching.test_architectures import _build

    model = _build(arch)
    x = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(1))
    mids = torch.zeros_like(x)
    with torch.no_grad():
        ref = model(x).logits
        adapter = attach(model, DeltaMemConfig(rank=2, output_init="zero", copy_rank=3))
        with torch.no_grad():
            adapter.copy.beta.bias.fill_(1.0)
        full = forward_with_state(model, x, None, message_ids=mids)
        st, logits = _split(model, x, mids, [0, 4, 5, 11])
    assert full.state.C.abs().max() > 0 and not torch.allclose(full.outputs.logits, ref)
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(st.C, full.state.C, rtol=1e-4, atol=1e-5)
    detach(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref)
