"""The copy channel's message write gate (core/copy.py, core/config.py): the config fields are validated and
serialised only for the message gate, the gate inputs' vectorised form equals the per-position loop at odd sizes
(left padding, holes, several messages and unwritten tokens per row), and each gate kind has its own parameters."""

from __future__ import annotations

import pytest
import torch

from deltamem_agents.core import copy as cp
from deltamem_agents.core.config import DeltaMemConfig


def test_config_gate_fields_validated_and_serialised_only_for_the_message_gate():
    plain = DeltaMemConfig(copy_rank=64)
    assert plain.copy_gate == "token" and plain.copy_gate_hidden == 256
    d = plain.to_dict()
    assert "copy_gate" not in d and "copy_gate_hidden" not in d and d["format_version"] == 2  # as before
    assert "copy_gate" not in DeltaMemConfig().to_dict()
    msg = DeltaMemConfig(copy_rank=8, copy_gate="message", copy_gate_hidden=32)
    d = msg.to_dict()
    assert d["copy_gate"] == "message" and d["copy_gate_hidden"] == 32 and d["format_version"] == 2
    assert DeltaMemConfig.from_dict(d) == msg and DeltaMemConfig.from_dict(plain.to_dict()) == plain
    assert plain.replace(copy_gate="message") == DeltaMemConfig(copy_rank=64, copy_gate="message")
    for kw, match in ((dict(copy_rank=8, copy_gate="mlp"), "copy_gate must be one of"),
                      (dict(copy_gate="message"), "copy_rank > 0"),
                      (dict(copy_rank=8, copy_gate="message", copy_gate_hidden=0), "copy_gate_hidden"),
                      (dict(copy_rank=8, copy_gate="message", copy_gate_hidden=True), "copy_gate_hidden"),
                      (dict(copy_rank=8, copy_gate_hidden=64), "message gate")):
        with pytest.raises(ValueError, match=match):
            DeltaMemConfig(**kw)


def _rows(B: int, T: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h_prev, h = torch.randn(B, T, d, generator=g), torch.randn(B, T, d, generator=g)
    valid = torch.rand(B, T, generator=g) > 0.15  # holes
    valid[0, : T // 3] = False  # left padding
    mids = torch.sort(torch.randint(-1, 5, (B, T), generator=g), dim=1).values  # -1: not written
    mids[-1] = torch.arange(T) // 3 + 7  # several short messages, ids not starting at 0
    return h_prev, h, mids, valid


@pytest.mark.parametrize("B,T,d,seed", [(3, 17, 5, 0), (1, 1, 3, 1), (2, 9, 7, 2), (4, 31, 2, 3), (2, 0, 3, 4)])
def test_message_gate_inputs_equal_the_loop(B, T, d, seed):
    h_prev, h, mids, valid = _rows(B, T, d, seed)
    want = cp.message_gate_inputs_naive(h_prev, h, mids, valid)
    got = cp.message_gate_inputs(h_prev, h, mids, valid)
    assert got.shape == (B, T, 3 * d)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_message_gate_inputs_spelled_out():
    """One row, padding then messages 0 (3 tokens, a hole inside) and 1 (2 tokens)."""
    d = 2
    h_prev = torch.arange(14, dtype=torch.float32).view(1, 7, d)
    h = -h_prev
    valid = torch.tensor([[0, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    mids = torch.tensor([[0, 0, 0, 0, 0, 1, 1]])
    x = cp.message_gate_inputs(h_prev, h, mids, valid)
    assert not x[0, 0].any() and not x[0, 3].any()  # padding
    assert torch.equal(x[0, 2, d:2 * d], h[0, 2])  # the hole is skipped: position 4 is next in message 0
    assert not x[0, 4, d:2 * d].any() and not x[0, 6, d:2 * d].any()  # each message's last token
    assert torch.equal(x[0, 1, 2 * d:], h_prev[0, [1, 2, 4]].mean(0))
    assert torch.equal(x[0, 6, 2 * d:], h_prev[0, 5:].mean(0))


def test_each_gate_kind_has_its_parameters_and_gates():
    d, r = 6, 3
    tok, msg = cp.CopyChannel(d, r), cp.CopyChannel(d, r, gate="message", gate_hidden=5, beta_bias=-3.0)
    assert set(tok.state_dict()) == set(cp.copy_params("token")) == set(cp.COPY_PARAMS)
    assert set(msg.state_dict()) == set(cp.copy_params("message")) and not hasattr(msg, "beta")
    assert msg.mgate[0].weight.shape == (5, 3 * d) and float(msg.mgate[2].bias.detach()) == -3.0
    h_prev, h, mids, valid = _rows(2, 8, d, 5)
    beta = torch.sigmoid(tok.beta(h_prev)).squeeze(-1)
    torch.testing.assert_close(tok.write_gates(h_prev, h, mids, valid), beta)  # the token gate ignores the rest
    torch.testing.assert_close(tok.key(h_prev), torch.nn.functional.normalize(tok.wk(h_prev), dim=-1))
    torch.testing.assert_close(msg.key(h_prev), torch.nn.functional.normalize(msg.wk(h_prev), dim=-1))
    b = msg.write_gates(h_prev, h, mids, valid)
    want = torch.sigmoid(msg.mgate(cp.message_gate_inputs_naive(h_prev, h, mids, valid))).squeeze(-1)
    assert b.shape == (2, 8) and b.dtype == torch.float32
    torch.testing.assert_close(b, want)
    one = torch.zeros_like(mids)
    torch.testing.assert_close(msg.write_gates(h_prev, h, None, valid), msg.write_gates(h_prev, h, one, valid))
    with pytest.raises(ValueError, match="copy gate"):
        cp.CopyChannel(d, r, gate="mlp")
    with pytest.raises(ValueError, match="copy gate"):
        cp.copy_params("mlp")
