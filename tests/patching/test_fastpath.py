"""The inference fast path (core/fastpath.py) against the reference `DeltaMemLayer.step`, on random inputs at
odd sizes: one layer in isolation (every write mode, gate layout, update mode, threshold, padding, batch > 1),
then whole tiny models through `forward_with_state` (prefill then token-by-token decoding, logits and state)."""

from __future__ import annotations

import itertools

import pytest
import torch

from deltamem_agents.core import fastpath
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.memory import DeltaMemLayer
from deltamem_agents.core.segments import Segments
from deltamem_agents.patching import attach
from deltamem_agents.patching.forward import forward_with_state
from deltamem_agents.patching.hf_cache import cache_kwargs, output_cache

from tests.conftest import randomize_adapter, tiny_llama

D, QO, OO = 37, 29, 31  # odd hidden / q_proj / o_proj widths


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-5) -> None:
    """Equal up to float32 rounding at the scale of the values (without q̂/k̂ normalisation they grow large)."""
    assert a.shape == b.shape
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= rel * scale, f"max difference {err:.3g} at scale {scale:.3g}"


def _layer(cfg: DeltaMemConfig, seed: int) -> DeltaMemLayer:
    torch.manual_seed(seed)
    layer = DeltaMemLayer(cfg, D, QO, OO)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * (0.6 if name != "beta_bias" else 1.0))
        if layer.input_center is not None:
            layer.input_center.copy_(torch.randn(D) * 0.3)
    return layer


CASES = [  # (write_granularity, heads, rank, rankwise, update mode, threshold, center, normalize)
    ("token", 1, 8, True, "no_lambda", 0.5, True, True),  # the shipped adapter's mode
    ("token", 2, 3, False, "standard", 0.0, False, True),
    ("token", 3, 5, True, "lambda_outside", 0.0, True, False),
    ("message_mean", 1, 5, True, "standard", 0.0, False, True),
    ("message_mean", 2, 3, False, "no_lambda", 0.0, True, True),
]


def _inputs(B: int, T: int, message: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    valid = torch.ones(B, T, dtype=torch.bool)
    if B > 1:
        valid[1, : T // 2] = False  # left padding in row 1
    if message:
        ids = torch.cumsum((torch.rand(B, T, generator=g) < 0.3).long(), dim=1) + 2
    else:
        ids = torch.where(torch.rand(B, T, generator=g) < 0.2, -1, 4)  # some tokens not written
    return x, valid, ids


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-H{c[1]}r{c[2]}-{c[4]}-thr{c[5]}")
def test_layer_step_matches_reference(case):
    gran, H, r, rankwise, mode, thr, center, norm = case
    cfg = DeltaMemConfig(write_granularity=gran, num_state_heads=H, rank=r, rankwise_gates=rankwise,
                         state_update_mode=mode, write_threshold=thr, center_inputs=center, normalize_qk=norm)
    layer = _layer(cfg, seed=H * 10 + r)
    message = gran == "message_mean"
    with torch.no_grad():
        for (B, T), zero, write in itertools.product(((1, 1), (3, 1), (1, 13), (3, 6)), (False, True), (True, False)):
            x, valid, ids = _inputs(B, T, message, seed=B * 100 + T)
            S = torch.zeros(B, H, r, r) if zero else torch.randn(B, H, r, r) * 0.5
            pend_sum = torch.randn(B, D) if message else torch.zeros(B, D)
            pend_id = torch.full((B,), 2 if message else -1, dtype=torch.long)
            seg = Segments.build(valid, ids, message_mode=message and write, pend_id=pend_id,
                                 pend_count=torch.full((B,), 3.0))
            ref = layer.step(x, S, pend_sum, seg, write)
            fast = fastpath.step(layer, x, S, pend_sum, seg, write, state_zero=zero)
            read = fast.read if fast.read is not None else torch.zeros_like(ref.read)
            assert fast.read is not None or (zero and T == 1)
            _close(read, ref.read)
            _close(fast.S, ref.S)
            _close(fast.pend_sum, ref.pend_sum)
            dq, do = fastpath.corrections(fastpath.fused_weights(layer), read)
            _close(dq, layer.delta_q(read))
            _close(do, layer.delta_o(read))


def test_fused_weights_follow_parameter_changes():
    layer = _layer(DeltaMemConfig(rank=3), seed=1)
    first = fastpath.fused_weights(layer)
    assert fastpath.fused_weights(layer) is first  # cached while nothing changes
    with torch.no_grad():
        layer.memory_v_proj.add_(1.0)
        layer.delta_o_proj.mul_(2.0)
    again = fastpath.fused_weights(layer)
    assert again is not first
    R = layer.memory_q_proj.shape[0]
    torch.testing.assert_close(again.proj[2 * R : 3 * R], layer.memory_v_proj)
    torch.testing.assert_close(again.corr[QO:], layer.cfg.scaling * layer.delta_o_proj)


def _reference_then_fast(run):
    """`run()` on the reference δ-mem step, then on the fast path."""
    old = fastpath.set_enabled(False)
    try:
        ref = run()
    finally:
        fastpath.set_enabled(old)
    return ref, run()


def _model(cfg: DeltaMemConfig, seed: int):
    model = tiny_llama(seed=seed, layers=3)
    adapter = attach(model, cfg)
    randomize_adapter(adapter, seed=seed, scale=0.6)
    if cfg.write_threshold:  # gates around the threshold: some tokens written, some skipped
        with torch.no_grad():
            for layer in adapter.layers:
                layer.beta_bias.add_(1.0)
    return model


@pytest.mark.parametrize("cfg,B", [
    (DeltaMemConfig(rank=8, state_update_mode="no_lambda", write_threshold=0.45, center_inputs=True), 1),
    (DeltaMemConfig(rank=8, state_update_mode="no_lambda", write_threshold=0.45, center_inputs=True), 2),
    (DeltaMemConfig(rank=3, num_state_heads=2, write_granularity="message_mean"), 2),
    (DeltaMemConfig(rank=5, task_rank=3, state_update_mode="lambda_outside"), 1),
], ids=["tsw-threshold-B1", "tsw-threshold-B2", "ssw-H2-B2", "task-path-B1"])
def test_model_prefill_and_decode_match_reference(cfg, B, one_thread):
    model = _model(cfg, seed=5)
    g = torch.Generator().manual_seed(0)
    T = 11
    ids = torch.randint(0, 97, (B, T), generator=g)
    mids = torch.tensor([[-1] * 3 + [0] * 4 + [1] * 4] * B)
    att = torch.ones(B, T, dtype=torch.long)
    att[-1, :2] = 0 if B > 1 else 1

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        out = forward_with_state(model, ids, None, message_ids=mids, attention_mask=att, **cache_kwargs(model, cache))
        logits, state, mask = [out.outputs.logits], out.state, att
        for step in range(5):
            nxt = torch.randint(0, 97, (B, 1), generator=torch.Generator().manual_seed(step))
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], dim=1)
            out = forward_with_state(model, nxt, state, message_ids=torch.full((B, 1), 2), attention_mask=mask,
                                     **cache_kwargs(model, output_cache(out.outputs)))
            logits.append(out.outputs.logits)
            state = out.state
        return logits, state.S

    with torch.no_grad():
        (ref_logits, ref_S), (fast_logits, fast_S) = _reference_then_fast(run)
    for a, b in zip(fast_logits, ref_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_S, ref_S, atol=1e-5, rtol=1e-4)
    assert ref_S.abs().sum() > 0  # something was written


def test_training_uses_the_reference_path_and_backpropagates(one_thread):
    model = _model(DeltaMemConfig(rank=3), seed=2)
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    assert fastpath.enabled() and not fastpath.usable()  # grad mode: never the fast path
    out = forward_with_state(model, ids, None)
    (out.outputs.logits.square().mean() + out.state.S.square().sum()).backward()
    grads = [p.grad for p in model.deltamem.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_bf16_backbone_single_token_decode_matches_reference(one_thread):
    """bf16 weights (the CUDA policy) with the fp32 adapter: the one-token host route casts like the reference."""
    from transformers import DynamicCache

    cfg = DeltaMemConfig(rank=8, state_update_mode="no_lambda", center_inputs=True)
    model = _model(cfg, seed=7)
    for name, p in model.named_parameters():
        if "deltamem" not in name:
            p.data = p.data.to(torch.bfloat16)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(1))

    def run():
        cache = DynamicCache(config=model.config)
        out = forward_with_state(model, ids, None, message_ids=torch.zeros(1, 6, dtype=torch.long),
                                 **cache_kwargs(model, cache))
        out = forward_with_state(model, ids[:, :1], out.state, message_ids=torch.zeros(1, 1, dtype=torch.long),
                                 **cache_kwargs(model, output_cache(out.outputs)))
        return out.outputs.logits.float(), out.state.S

    with torch.inference_mode():
        (ref_logits, ref_S), (fast_logits, fast_S) = _reference_then_fast(run)
    torch.testing.assert_close(fast_S, ref_S, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast_logits, ref_logits, atol=5e-2, rtol=5e-2)
