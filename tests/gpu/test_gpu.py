"""The real default backbone on a CUDA device, loaded by the device policy (bf16; FlashAttention-2 when `flash_attn`
imports, and SDPA): the patching invariants hold, and a training step runs. Skipped without CUDA."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.chat.loading import DEFAULT_ADAPTER
from deltamem_agents.patching import attach, detach, forward_with_state
from deltamem_agents.patching.adapter_io import read_adapter_config
from deltamem_agents.patching.device import flash_attn_available, resolve_policy
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache

pytestmark = pytest.mark.gpu
DEVICE = "cuda"

ATTNS = ["sdpa"] + (["flash_attention_2"] if flash_attn_available() else [])
TEXT = ("User: my locker code is 4417 and my sister's dog is called Biscuit. Assistant: Noted, 4417 and Biscuit. "
        "User: what did I say my locker code was? Assistant:")


@pytest.fixture(scope="module", params=ATTNS)
def backbone(request):
    """(model, tokenizer) in bf16 on CUDA with the given attention implementation; tests attach and detach."""
    return load_backbone(attn_implementation=request.param)


def _attach_shipped(model, **overrides):
    """The shipped adapter's weights in its config (with `overrides`), attached to `model`."""
    from safetensors.torch import load_file

    cfg = dataclasses.replace(read_adapter_config(DEFAULT_ADAPTER)["config"], **overrides)
    adapter = attach(model, cfg)
    adapter.load_state_dict(load_file(str(DEFAULT_ADAPTER / "adapter.safetensors")))
    return adapter


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok(TEXT)["input_ids"]], device=DEVICE)


def _incremental(model, x, state, **kw):
    """Logits of x fed in two chunks and then one token at a time with a KV cache; the state carried."""
    from transformers import DynamicCache

    T = x.shape[1]
    cache, logits = DynamicCache(config=model.config), []
    cuts = [0, 9, T - 6] + list(range(T - 5, T + 1))
    for a, b in zip(cuts[:-1], cuts[1:]):
        o = forward_with_state(model, x[:, a:b], state, **cache_kwargs(model, cache), use_cache=True, **kw)
        state, cache = o.state, output_cache(o.outputs)
        logits.append(o.outputs.logits)
    return torch.cat(logits, 1).float(), state


def test_the_policy_loads_bf16_with_flash_attention_when_it_imports():
    policy = resolve_policy()
    assert torch.device(policy.device).type == "cuda" and policy.dtype == torch.bfloat16
    assert policy.attn_implementation == ("flash_attention_2" if flash_attn_available() else "sdpa")
    model, _ = load_backbone()
    p = next(model.parameters())
    assert p.is_cuda and p.dtype == torch.bfloat16
    assert model.config._attn_implementation == policy.attn_implementation
    assert model.deltamem_policy == policy


@torch.inference_mode()
def test_zero_state_gives_the_backbones_logits(backbone):
    model, tok = backbone
    x = _ids(tok)
    ref = model(x).logits
    adapter = _attach_shipped(model)
    try:
        assert all(p.dtype == torch.float32 and p.device.type == DEVICE for p in adapter.parameters())  # fp32
        assert torch.equal(model(x).logits, ref)  # outside a δ-mem call the wrappers pass through
        read_only = forward_with_state(model, x, adapter.zero_state(1, x.device), write=False)
        assert torch.equal(read_only.outputs.logits, ref)
        written = forward_with_state(model, x, adapter.zero_state(1, x.device))
        assert torch.equal(written.outputs.logits[:, :1], ref[:, :1])  # token 0 reads the zero state
        assert written.state.S.dtype == torch.float32 and written.state.S.abs().sum() > 0
    finally:
        detach(model)


@torch.inference_mode()
def test_incremental_decode_equals_one_pass_in_bf16(backbone):
    """bf16 chunked and one-pass kernels round differently, so the backbone itself differs a little between
    the two; δ-mem may add little to that, and its fp32 state must match. Gates without the write threshold:
    a threshold turns rounding into written/unwritten flips (measured on CPU bf16: state 19 % apart with it,
    1 % without; a state not carried across chunks: 100 %)."""
    model, tok = backbone
    x = _ids(tok)
    adapter = _attach_shipped(model, write_threshold=0.0)
    try:
        zero = adapter.zero_state(1, x.device)
        plain_one = forward_with_state(model, x, zero, write=False).outputs.logits.float()
        plain_inc, _ = _incremental(model, x, zero, write=False)
        full = forward_with_state(model, x, zero)
        inc, st = _incremental(model, x, zero)
    finally:
        detach(model)
    one = full.outputs.logits.float()
    backbone_noise = (plain_inc - plain_one).abs().mean().item()
    assert (inc - one).abs().mean().item() <= 1.5 * backbone_noise + 0.03, backbone_noise
    assert (inc.argmax(-1) == one.argmax(-1)).float().mean().item() > 0.9
    rel = ((st.S - full.state.S).norm() / full.state.S.norm()).item()
    assert rel < 0.05, rel


def test_a_training_step_runs_in_bf16(tmp_path):
    from deltamem_agents.train.trainer import TrainConfig, Trainer

    model, tok = load_backbone()
    cfg = TrainConfig(out_dir=str(tmp_path), steps=1, grad_accum=2, lr=1e-3, diag_every=1, diag_episodes=1,
                      diag_budget=128, diag_distance=60, calibration_episodes=2,
                      sampler={"budget_range": (128, 160), "distance_start": 10, "distance_end": 40,
                               "in_window_frac": 0.0, "mix": {"fact": 1.0}})
    tr = Trainer(model, tok, cfg)
    assert next(model.model.parameters()).dtype == torch.bfloat16  # the policy's default on CUDA
    before = {n: p.detach().clone() for n, p in tr.adapter.named_parameters()}
    tr.train()
    assert any(not torch.equal(p, before[n]) for n, p in tr.adapter.named_parameters())
    assert all(p.dtype == torch.float32 and p.is_cuda for p in tr.adapter.parameters())
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and row["loss"] == row["loss"] and row["memory_gap"] == row["memory_gap"]
    assert (tmp_path / "checkpoint-last" / "adapter" / "adapter.safetensors").is_file()
