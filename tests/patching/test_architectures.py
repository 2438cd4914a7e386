"""Every registered architecture on a tiny random-weight config: the patching invariants hold for each.

Per architecture: a zero state gives the backbone's logits exactly; attach → detach restores the backbone;
chunked prefill + one-token decode with a KV cache and the carried state equals one pass; adapter
save → load gives identical outputs. The registry must list exactly the architectures tested here.
"""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import msw, tsw
from deltamem_agents.errors import UnsupportedArchitectureError
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.patching.adapter_io import load_adapter, save_adapter
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache
from deltamem_agents.patching.registry import REGISTRY
from tests.conftest import randomize_adapter

V = 97
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=V, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of `arch` exercising what is special about it (q bias, q/k norms, NoPE, windows)."""
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL))
    elif arch == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**SMALL, head_dim=16))
    elif arch == "qwen2":  # q/k/v projections with bias
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL))
    elif arch == "qwen3":  # per-head q_norm / k_norm after q_proj
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, head_dim=16))
    elif arch == "smollm3":  # layer 1 has no RoPE
        model = tf.SmolLM3ForCausalLM(tf.SmolLM3Config(**SMALL, no_rope_layers=[1, 0]))
    elif arch == "gemma3_text":  # q/k norms, a sliding-window layer (window 6 < the test sequences), post-attn norm
        cfg = tf.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=6, query_pre_attn_scalar=16,
                                  layer_types=["sliding_attention", "full_attention"])
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise KeyError(arch)
    with torch.no_grad():  # some norms start at exactly 1 (or 0 for Gemma's 1+w): make them non-trivial
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma3_text"]


def _ids(T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_exactly_the_tested_architectures():
    assert set(REGISTRY) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_state_and_attach_detach_are_the_backbone(arch):
    model, x = _build(arch), _ids(13)
    assert model.config.model_type == arch
    ref = model(x).logits
    adapter = attach(model, tsw())
    randomize_adapter(adapter)
    assert torch.equal(model(x).logits, ref)  # outside a δ-mem call: pass-through
    out = forward_with_state(model, x, adapter.zero_state(), write=False).outputs.logits
    assert torch.equal(out, ref)
    written = forward_with_state(model, x, adapter.zero_state())
    assert torch.equal(written.outputs.logits[:, :1], ref[:, :1])  # token 0 reads the zero state
    assert not torch.allclose(written.outputs.logits, ref) and written.state.S.abs().sum() > 0
    detach(model)
    assert torch.equal(model(x).logits, ref)
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith(("q_proj", "o_proj")))


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decode_equals_one_pass(arch):
    from transformers import DynamicCache

    model, T = _build(arch, seed=1), 17
    x = _ids(T, seed=2)
    adapter = attach(model, msw(rank=4, num_state_heads=2))
    randomize_adapter(adapter, seed=3)
    full = forward_with_state(model, x, adapter.zero_state())
    cache, st, logits = DynamicCache(config=model.config), adapter.zero_state(), []
    cuts = [0, 5, 12] + list(range(13, T + 1))  # a chunk longer than Gemma's window, then single tokens
    for a, b in zip(cuts[:-1], cuts[1:]):
        o = forward_with_state(model, x[:, a:b], st, **cache_kwargs(model, cache), use_cache=True)
        st, cache = o.state, output_cache(o.outputs)
        logits.append(o.outputs.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full.outputs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st.S, full.state.S, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_save_load_identical(arch, tmp_path):
    model, x = _build(arch, seed=4), _ids(11, seed=5)
    adapter = attach(model, tsw(rank=4))
    randomize_adapter(adapter, seed=6)
    st = forward_with_state(model, x, adapter.zero_state()).state
    before = forward_with_state(model, x, st).outputs.logits
    save_adapter(model, tmp_path / "a")
    detach(model)
    loaded = load_adapter(model, tmp_path / "a")
    assert loaded.fingerprint["model_type"] == arch
    after = forward_with_state(model, x, st).outputs.logits
    assert torch.equal(before, after)


def test_fused_qkv_architecture_is_refused():
    """Phi-3 fuses q/k/v into one `qkv_proj`: not registered (see the registry's docstring)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(**SMALL))
    with pytest.raises(UnsupportedArchitectureError, match="phi3"):
        attach(model, tsw())
