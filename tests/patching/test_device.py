"""Device / dtype / attention policy (patching/device.py) and δ-mem's independence of the attention kernel.

The policy's decisions are checked with monkeypatched capabilities (no GPU needed); `load_backbone` is
checked to apply them to a tiny saved model; eager and SDPA attention give the same δ-state and logits.
"""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import tsw
from deltamem_agents.patching import attach, forward_with_state
from deltamem_agents.patching import device as dev
from tests.conftest import randomize_adapter, tiny_llama


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def machine(monkeypatch):
    """Set the probed capabilities: machine(cuda=..., flash=..., cpu_bf16=...)."""
    def set_caps(cuda: bool = False, flash: bool = False, cpu_bf16: bool = False) -> None:
        monkeypatch.setattr(dev, "cuda_available", lambda: cuda)
        monkeypatch.setattr(dev, "flash_attn_available", lambda: flash)
        monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: cpu_bf16)
    return set_caps


@pytest.mark.parametrize("caps, want", [
    (dict(cuda=True, flash=True), ("cuda", torch.bfloat16, "flash_attention_2")),
    (dict(cuda=True, flash=False), ("cuda", torch.bfloat16, "sdpa")),
    (dict(cuda=False, cpu_bf16=False), ("cpu", torch.float32, "sdpa")),
    (dict(cuda=False, cpu_bf16=True), ("cpu", torch.float32, "sdpa")),  # bf16 on a CPU is opt-in
])
def test_policy_defaults(machine, caps, want):
    machine(**caps)
    p = dev.resolve_policy()
    assert (p.device, p.dtype, p.attn_implementation) == want
    assert p.state_dtype == torch.float32
    assert p.from_pretrained_kwargs() == {"dtype": want[1], "attn_implementation": want[2]}


def test_policy_overrides(machine):
    machine(cuda=True, flash=True)
    assert dev.resolve_policy(device="cpu").dtype == torch.float32  # the CPU rules apply to a CPU device
    assert dev.resolve_policy(device="cpu").attn_implementation == "sdpa"
    p = dev.resolve_policy(dtype="float32")  # FlashAttention-2 needs half precision: not chosen for fp32
    assert (p.device, p.dtype, p.attn_implementation) == ("cuda", torch.float32, "sdpa")
    p = dev.resolve_policy(device="cuda:1", dtype=torch.float16, attn_implementation="eager")
    assert (p.device, p.dtype, p.attn_implementation) == ("cuda:1", torch.float16, "eager")
    assert dev.resolve_policy(dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        dev.resolve_policy(device="cpu", attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="unknown dtype"):
        dev.resolve_policy(dtype="float8")
    with pytest.raises(ValueError, match="unknown attn_implementation"):
        dev.resolve_policy(attn_implementation="fast")


def test_cpu_bf16_probe_reads_feature_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_f": True})
    assert dev.cpu_supports_bf16() is False  # AVX512 alone emulates bf16
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": True})
    assert dev.cpu_supports_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert dev.cpu_supports_bf16() is True


def test_load_backbone_applies_the_policy(machine, monkeypatch, tmp_path):
    import deltamem_agents.backbone as bb

    tiny_llama(layers=1).save_pretrained(tmp_path)
    monkeypatch.setattr(bb, "load_tokenizer", lambda path: "tok")  # the tiny model has no tokenizer
    machine(cuda=False, cpu_bf16=False)
    net, tok = bb.load_backbone(tmp_path)
    assert tok == "tok" and net.dtype == torch.float32 and net.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert net.deltamem_policy.device == "cpu"
    net, _ = bb.load_backbone(tmp_path, dtype="bfloat16", attn_implementation="eager")
    assert net.dtype == torch.bfloat16 and net.config._attn_implementation == "eager"


def test_eager_and_sdpa_give_the_same_state_and_logits():
    """δ-mem's corrections do not depend on the attention kernel, padding included (it reads the 2-D mask)."""
    T, pad = 15, 3
    g = torch.Generator().manual_seed(1)
    x = torch.randint(3, 97, (2, T + pad), generator=g)
    mask = torch.ones_like(x)
    mask[1, :pad] = 0  # row 1 left-padded
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    x2 = torch.randint(3, 97, (2, 6), generator=g)
    runs = {}
    for impl in ("eager", "sdpa"):
        model = tiny_llama(seed=0, layers=2)
        model.set_attn_implementation(impl)
        assert model.config._attn_implementation == impl
        adapter = attach(model, tsw())
        randomize_adapter(adapter, seed=2)
        first = forward_with_state(model, x, adapter.zero_state(2), attention_mask=mask, position_ids=pos)
        second = forward_with_state(model, x2, first.state)  # a second call reads and extends the carried state
        runs[impl] = (first, second)
    (e1, e2), (s1, s2) = runs["eager"], runs["sdpa"]
    torch.testing.assert_close(e1.state.S, s1.state.S, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e2.state.S, s2.state.S, rtol=1e-4, atol=1e-6)
    keep = mask.bool()
    torch.testing.assert_close(e1.outputs.logits[keep], s1.outputs.logits[keep], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e2.outputs.logits, s2.outputs.logits, rtol=1e-4, atol=1e-5)
    assert e2.state.S.abs().sum() > 0 and not torch.equal(e2.state.S, e1.state.S)
