"""`fold_linear_gate`: a linear decision installed as a layer's write gate selects exactly the tokens the decision
accepts (β̄ ≥ τ ⟺ w·x + b ≥ 0), with and without input centring, and refuses a weight of the wrong size."""
from __future__ import annotations

import pytest
import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.memory import DeltaMemLayer
from lab.write_selector import fold_linear_gate


@pytest.mark.parametrize("center,tau,rank,heads,seed", [(False, 0.8, 3, 2, 0), (True, 0.8, 5, 1, 1),
                                                        (True, 0.35, 2, 3, 2)])
def test_folded_gate_selects_what_the_decision_accepts(center, tau, rank, heads, seed):
    torch.manual_seed(seed)
    d = 19
    cfg = DeltaMemConfig(rank=rank, num_state_heads=heads, write_granularity="token", write_threshold=tau,
                         center_inputs=center)
    layer = DeltaMemLayer(cfg, hidden=d, q_out=d, o_out=d)
    if center:
        layer.input_center.normal_()
    w, b = torch.randn(d), 0.3
    fold_linear_gate(layer, w, b, tau)
    x = torch.randn(2, 37, d) * 2
    z = x @ w + b
    _, _, _, beta = layer.project(x)
    clear = z.abs() > 1e-4  # off the boundary, where float rounding could go either way
    assert clear.float().mean() > 0.99 and 0 < int((z > 0).sum()) < z.numel()
    chosen = layer.selected(beta, torch.ones(2, 37, dtype=torch.bool))
    assert torch.equal(chosen[clear], (z >= 0)[clear])
    # every rank-wise gate equal: the written strength is sigmoid(z + logit τ)
    expect = torch.sigmoid(z + torch.logit(torch.tensor(tau)))
    torch.testing.assert_close(beta, expect[..., None, None].expand_as(beta), atol=1e-5, rtol=1e-5)


def test_fold_refuses_bad_inputs():
    layer = DeltaMemLayer(DeltaMemConfig(write_granularity="token", write_threshold=0.8), hidden=16, q_out=16, o_out=16)
    with pytest.raises(ValueError, match="entries"):
        fold_linear_gate(layer, torch.randn(15), 0.0, 0.8)
    with pytest.raises(ValueError, match="threshold"):
        fold_linear_gate(layer, torch.randn(16), 0.0, 1.0)
