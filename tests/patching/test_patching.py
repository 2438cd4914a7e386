"""Patching invariants on a tiny random Llama: zero-state identity, attach/detach, causality, chunking."""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import msw, ssw, tsw
from deltamem_agents.errors import AlreadyAttachedError, NotAttachedError, UnsupportedArchitectureError
from deltamem_agents.patching import attach, detach, disabled, forward_with_state
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache
from tests.conftest import randomize_adapter, tiny_llama

CONFIGS = {"tsw": tsw(), "ssw": ssw(), "msw": msw(), "tsw_r5_mid": tsw(rank=5, target_layers=(1,))}


def _ids(T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(seed))


def _msg_ids(T: int, n_msgs: int) -> torch.Tensor:
    # system prompt (-1) for 3 tokens, then n_msgs messages of roughly equal length
    ids = torch.full((1, T), -1)
    bounds = torch.linspace(3, T, n_msgs + 1).long()
    for m in range(n_msgs):
        ids[0, bounds[m]:bounds[m + 1]] = m
    return ids


@pytest.mark.parametrize("name", list(CONFIGS))
def test_zero_state_is_exactly_the_backbone(tiny, name):
    x = _ids(23)
    ref = tiny(x).logits
    adapter = attach(tiny, CONFIGS[name])
    randomize_adapter(adapter)
    st = adapter.zero_state()
    out = forward_with_state(tiny, x, st, write=False).outputs.logits
    assert torch.equal(out, ref)
    # with writes on, the first token still reads a zero state
    out = forward_with_state(tiny, x, st, message_ids=_msg_ids(23, 3)).outputs.logits
    assert torch.equal(out[:, :1], ref[:, :1])
    assert not torch.allclose(out, ref)  # later tokens do see the memory


def test_attach_detach_and_errors(tiny):
    x = _ids(11)
    ref = tiny(x).logits
    adapter = attach(tiny, tsw())
    randomize_adapter(adapter)
    with pytest.raises(AlreadyAttachedError):
        attach(tiny, tsw())
    assert torch.equal(tiny(x).logits, ref)  # outside a call: pass-through
    with disabled():
        assert torch.equal(forward_with_state(tiny, x, adapter.zero_state()).outputs.logits, ref)
    detach(tiny)
    assert torch.equal(tiny(x).logits, ref)
    assert all(type(m).__name__ == "Linear" for n, m in tiny.named_modules() if n.endswith(("q_proj", "o_proj")))
    with pytest.raises(NotAttachedError):
        detach(tiny)
    attach(tiny, ssw())  # re-attach after detach works


def test_unknown_architecture_raises():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError):
        attach(model, tsw())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_incremental_decode_equals_one_pass(tiny, name):
    """Chunked prefill + one-token decode steps with KV cache and carried state == one full forward."""
    from transformers import DynamicCache

    T = 29
    x, mids = _ids(T), _msg_ids(T, 4)
    adapter = attach(tiny, CONFIGS[name])
    randomize_adapter(adapter, seed=3)
    full = forward_with_state(tiny, x, adapter.zero_state(), message_ids=mids)
    cache, st, logits = DynamicCache(config=tiny.config), adapter.zero_state(), []
    cuts = [0, 7, 16, 17, 18] + list(range(19, T + 1))
    for a, b in zip(cuts[:-1], cuts[1:]):
        o = forward_with_state(tiny, x[:, a:b], st, message_ids=mids[:, a:b], **cache_kwargs(tiny, cache),
                              use_cache=True)
        st, cache = o.state, output_cache(o.outputs)
        logits.append(o.outputs.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st.S, full.state.S, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(st.pend_sum, full.state.pend_sum, rtol=1e-4, atol=1e-5)
    assert torch.equal(st.pend_id, full.state.pend_id)


@pytest.mark.parametrize("name", ["tsw", "ssw"])
def test_padding_neither_reads_nor_writes(tiny, name):
    adapter = attach(tiny, CONFIGS[name])
    randomize_adapter(adapter, seed=5)
    T, pad = 17, 4
    x, mids = _ids(T), _msg_ids(T, 3)
    alone = forward_with_state(tiny, x, adapter.zero_state(), message_ids=mids)
    xp = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], 1).repeat(2, 1)
    xp[1, pad:] = x  # row 1 left-padded, row 0 a different unpadded sequence
    xp[0] = _ids(T + pad, seed=9)
    mask = torch.ones_like(xp)
    mask[1, :pad] = 0
    mp = torch.cat([torch.full((1, pad), -1), mids], 1).repeat(2, 1)
    mp[0] = _msg_ids(T + pad, 3)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    both = forward_with_state(tiny, xp, adapter.zero_state(2), message_ids=mp, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(both.state.S[:, 1], alone.state.S[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(both.outputs.logits[1, pad:], alone.outputs.logits[0], rtol=1e-4, atol=1e-4)


def test_writes_off_keeps_state(tiny):
    adapter = attach(tiny, tsw())
    randomize_adapter(adapter)
    st = forward_with_state(tiny, _ids(13), adapter.zero_state()).state
    st2 = forward_with_state(tiny, _ids(9, seed=2), st, write=False).state
    assert st2.equal(st) and st.S.abs().sum() > 0


def test_only_adapter_gets_gradients(tiny):
    adapter = attach(tiny, ssw())
    x, mids = _ids(21), _msg_ids(21, 3)
    w = forward_with_state(tiny, x, adapter.zero_state(), message_ids=mids, skip_lm_head=True)
    out = forward_with_state(tiny, _ids(8, 4), w.state, write=False)
    out.outputs.logits.float().pow(2).mean().backward()
    for n, p in tiny.named_parameters():
        if n.startswith("deltamem."):
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, n
    grads = {n: p.grad for n, p in adapter.named_parameters()}
    for key in ("memory_q_proj", "memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias", "delta_o_proj"):
        assert grads[f"layers.0.{key}"] is not None and grads[f"layers.0.{key}"].abs().sum() > 0, key


def test_sessions_do_not_share_state(tiny):
    """Two conversations on one model: each call's state depends only on its own inputs."""
    adapter = attach(tiny, tsw())
    randomize_adapter(adapter)
    a1 = forward_with_state(tiny, _ids(10, 1), adapter.zero_state()).state
    forward_with_state(tiny, _ids(10, 2), adapter.zero_state())  # another session in between
    a2 = forward_with_state(tiny, _ids(10, 1), adapter.zero_state()).state
    assert a1.equal(a2)


def test_cache_keyword_is_this_transformers_own(tiny):
    """`cache_kwargs` names the KV cache as the installed transformers does (no deprecation warning; the old
    keyword warns on 5.24) and `output_cache` gets the same cache back, filled."""
    import warnings

    from transformers import DynamicCache

    cache = DynamicCache(config=tiny.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = tiny(input_ids=_ids(5), **cache_kwargs(tiny, cache), use_cache=True)
    assert output_cache(out) is cache and cache.get_seq_length() == 5
