"""Selective token writes (`write_threshold`): unselected tokens leave the state exactly unchanged, the layer
equals a per-token naive loop that skips them, and threshold 0 is the spec's dense write."""
from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.memory import DeltaMemLayer
from deltamem_agents.core.segments import Segments


def make_layer(threshold: float, seed: int, d: int = 24, rank: int = 3, heads: int = 2) -> DeltaMemLayer:
    torch.manual_seed(seed)
    cfg = DeltaMemConfig(rank=rank, num_state_heads=heads, write_granularity="token", write_threshold=threshold,
                         beta_bias_init=0.0)
    layer = DeltaMemLayer(cfg, hidden=d, q_out=d, o_out=d)
    with torch.no_grad():
        layer.beta_proj.normal_(0, 0.5)  # gates spread around 0.5 so some tokens fall on each side
    return layer


def naive(layer: DeltaMemLayer, x: torch.Tensor, S: torch.Tensor, written: torch.Tensor):
    """Token by token: read S_{t-1} q̂_t, then (if the token is a selected candidate) one delta-rule step."""
    q, k, v, beta = layer.project(x)
    keep, erase, wr = layer.coefficients(beta)
    S = S.clone().float()
    reads = []
    for t in range(x.shape[1]):
        reads.append(torch.einsum("bhij,bhj->bhi", S, q[:, t]).flatten(1))
        sel = written[:, t] & (beta[:, t].mean(dim=(-2, -1)) >= layer.cfg.write_threshold)
        kt, vt = k[:, t], v[:, t]
        upd = (keep[:, t][..., None] * S - erase[:, t][..., None] * torch.einsum("bhij,bhj,bhl->bhil", S, kt, kt)
               + wr[:, t][..., None] * torch.einsum("bhi,bhj->bhij", vt, kt))
        S = torch.where(sel[:, None, None, None], upd, S)
    return torch.stack(reads, dim=1), S


@pytest.mark.parametrize("threshold,T,seed", [(0.0, 7, 0), (0.5, 11, 1), (0.3, 5, 2), (0.7, 13, 3)])
def test_layer_matches_naive_forward_and_backward(threshold: float, T: int, seed: int) -> None:
    layer = make_layer(threshold, seed)
    B, d = 2, 24
    x = torch.randn(B, T, d, requires_grad=True)
    S0 = 0.1 * torch.randn(B, 2, 3, 3)
    ids = torch.arange(T).repeat(B, 1)
    ids[1, :2] = -1  # system-prompt-like tokens: never written
    seg = Segments.build(torch.ones(B, T, dtype=torch.bool), ids, message_mode=False)
    step = layer.step(x, S0, torch.zeros(B, d), seg, write=True)
    read_ref, S_ref = naive(layer, x, S0, seg.written)
    assert torch.allclose(step.read, read_ref, atol=1e-5)
    assert torch.allclose(step.S, S_ref, atol=1e-5)
    g = torch.randn_like(step.S)
    (gx,) = torch.autograd.grad((step.S * g).sum() + step.read.sum(), x)
    (gx_ref,) = torch.autograd.grad((S_ref * g).sum() + read_ref.sum(), x)
    assert torch.allclose(gx, gx_ref, atol=1e-4)


def test_unselected_tokens_leave_the_state_untouched() -> None:
    layer = make_layer(0.5, 7)
    with torch.no_grad():
        layer.beta_bias.fill_(-20.0)  # every gate far below the threshold
    B, T, d = 1, 9, 24
    S0 = torch.randn(B, 2, 3, 3)
    seg = Segments.build(torch.ones(B, T, dtype=torch.bool), torch.arange(T)[None], message_mode=False)
    step = layer.step(torch.randn(B, T, d), S0, torch.zeros(B, d), seg, write=True)
    assert torch.equal(step.S, S0.float())  # bit-identical: no decay, no write


def test_threshold_needs_token_writes() -> None:
    with pytest.raises(ValueError, match="token writes"):
        DeltaMemConfig(write_granularity="message_mean", write_threshold=0.5)
    with pytest.raises(ValueError, match="write_threshold"):
        DeltaMemConfig(write_threshold=1.0)
