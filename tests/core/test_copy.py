"""The copy channel's math (core/copy.py): the chunked write scan against the per-token reference (forward and
backward, odd sizes), the key shift over padding, the reads, the config field and the state tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltamem_agents.core import copy as cp
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.state import DeltaState
from deltamem_agents.errors import InvalidStateError


def _inputs(B: int, T: int, d: int, r: int, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, d, r, generator=g) * 0.3
    k = F.normalize(torch.randn(B, T, r, generator=g), dim=-1)
    v = F.normalize(torch.randn(B, T, d, generator=g), dim=-1)
    beta = torch.rand(B, T, generator=g)
    beta[0, 2: T // 2] = 0.0  # unwritten tokens
    q = F.normalize(torch.randn(B, T, r, generator=g), dim=-1)
    ts = [C, k, v, beta, q]
    return [t.requires_grad_(grad) for t in ts]


@pytest.mark.parametrize("B,T,d,r,chunk", [(2, 37, 11, 5, 8), (1, 9, 7, 13, 4), (3, 64, 6, 3, 32), (2, 5, 9, 4, 16)])
def test_chunked_scan_equals_the_per_token_loop(B, T, d, r, chunk):
    C, k, v, beta, q = _inputs(B, T, d, r, seed=T)
    ref_C, ref_O = cp.scan_naive(C, k, v, beta, q)
    got_C, got_O = cp.scan_chunked(C, k, v, beta, q, chunk_size=chunk)
    torch.testing.assert_close(got_C, ref_C, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_O, ref_O, rtol=1e-5, atol=1e-5)
    assert cp.scan_chunked(C, k, v, beta, None, chunk_size=chunk)[1] is None
    # a fully unwritten call leaves C bit-identical in both forms
    for fn in (cp.scan_naive, cp.scan_chunked):
        assert torch.equal(fn(C, k, v, torch.zeros_like(beta))[0], C)


def test_chunked_scan_gradients_equal_the_reference():
    B, T, d, r = 2, 23, 7, 5
    grads = []
    for fn in (cp.scan_naive, lambda *a: cp.scan_chunked(*a, chunk_size=6)):
        ins = _inputs(B, T, d, r, seed=4, grad=True)
        Cn, O = fn(*ins)
        w = torch.linspace(-1, 1, Cn.numel()).view_as(Cn)
        ((Cn * w).sum() + (O ** 2).sum()).backward()
        grads.append([t.grad.clone() for t in ins])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_write_semantics_match_the_delta_rule():
    """One token: C' = C + β (v − C k) kᵀ; with β = 1 the written value is read back exactly with q = k."""
    C, k, v, beta, _ = _inputs(1, 1, 6, 4, seed=2)
    new, O = cp.scan(C, k, v, torch.ones_like(beta), k)
    torch.testing.assert_close(O[:, 0], v[:, 0], rtol=1e-5, atol=1e-6)
    want = C + torch.einsum("bd,br->bdr", v[:, 0] - torch.einsum("bdr,br->bd", C, k[:, 0]), k[:, 0])
    torch.testing.assert_close(new, want)


def test_keys_come_from_the_previous_valid_position():
    B, T, d = 2, 6, 3
    h = torch.arange(B * T * d, dtype=torch.float32).view(B, T, d)
    prev = -torch.ones(B, d)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 1, 1]], dtype=torch.bool)  # left padding and a hole
    src = cp.shifted_keys(prev, h, valid)
    assert torch.equal(src[0, 0], prev[0]) and torch.equal(src[0, 1:], h[0, :-1])
    assert torch.equal(src[1, 2], prev[1]) and torch.equal(src[1, 4], h[1, 2]) and torch.equal(src[1, 5], h[1, 4])
    last = cp.last_valid(prev, h, valid)
    assert torch.equal(last, h[:, -1])
    assert torch.equal(cp.last_valid(prev, h, torch.zeros_like(valid)), prev)


def test_reads_naive_generic_and_tied_agree():
    g = torch.Generator().manual_seed(0)
    V, d, B, K = 53, 7, 2, 3
    E = torch.randn(V, d, generator=g)
    bias = torch.randn(V, generator=g)
    h, col = torch.randn(B, K, d, generator=g), torch.randn(B, K, d, generator=g)
    norms = cp.embedding_norms(E)
    assert cp.embedding_norms(E) is norms  # cached while the weight is unchanged
    ref = F.linear(h, E, bias) + cp.read_naive(E, col)
    torch.testing.assert_close(F.linear(h, E, bias) + cp.read_generic(E, norms, col), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cp.tied_logits(E, bias, norms, h, col), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        E.mul_(2.0)  # a changed weight: the norms are recomputed
    assert cp.embedding_norms(E) is not norms
    torch.testing.assert_close(cp.embedding_norms(E), 2 * norms)


def test_config_copy_rank_is_validated_and_versioned():
    assert DeltaMemConfig().copy_rank == 0
    plain = DeltaMemConfig().to_dict()
    assert "copy_rank" not in plain and plain["format_version"] == 1  # as before the copy channel
    assert DeltaMemConfig.from_dict(plain).copy_rank == 0
    d = DeltaMemConfig(copy_rank=64).to_dict()
    assert d["copy_rank"] == 64 and d["format_version"] == 2
    assert DeltaMemConfig.from_dict(d) == DeltaMemConfig(copy_rank=64)
    for bad in (-1, 1.5, True, 5000):
        with pytest.raises(ValueError, match="copy_rank"):
            DeltaMemConfig(copy_rank=bad)


def test_state_copy_tensors_stack_select_and_serialise():
    a = DeltaState.zeros(2, 1, 1, 3, 0, copy=(5, 4))
    b = DeltaState.zeros(2, 1, 1, 3, 0, copy=(5, 4))
    b.C.normal_()
    b.prev_h.normal_()
    assert a.copy_nbytes() == 4 * (5 * 4 + 5)
    both = DeltaState.stack([a, b])
    assert both.C.shape == (2, 5, 4) and both.select(1).equal(b) and both.rows(torch.tensor([1])).equal(b)
    c = both.clone()
    c.C.add_(1.0)
    assert both.equal(DeltaState.stack([a, b]))  # clone is deep
    blob = b.to_bytes({"fingerprint": "x"})
    back, info = DeltaState.from_bytes(blob, expect={"fingerprint": "x"})
    assert back.equal(b) and info == {"fingerprint": "x"}
    back.check_compatible(2, 1, 3, 0, copy=(5, 4))
    with pytest.raises(InvalidStateError, match="no copy channel"):
        back.check_compatible(2, 1, 3, 0)
    with pytest.raises(InvalidStateError, match="copy tensors"):
        back.check_compatible(2, 1, 3, 0, copy=(5, 3))
    with pytest.raises(InvalidStateError, match="with and without"):
        DeltaState.stack([a, DeltaState.zeros(2, 1, 1, 3, 0)])
    # a state without copy tensors is written in the version-1 format and fits a copy adapter (empty copy memory)
    old = DeltaState.zeros(2, 1, 1, 3, 0)
    blob = old.to_bytes()
    assert b'"format_version":"1"' in blob
    back, _ = DeltaState.from_bytes(blob)
    assert back.C is None
    back.check_compatible(2, 1, 3, 0, copy=(5, 4))
    assert back.with_copy(5, 4).equal(a)
    bad = b.clone()
    bad.C[0, 0, 0] = float("nan")
    with pytest.raises(InvalidStateError, match="NaN"):
        DeltaState.from_bytes(bad.to_bytes())


def test_shifted_ids_follow_shifted_keys():
    """Token ids shift exactly as hidden states do (the last valid token before each position, padding skipped,
    the carried id first); the last valid id of a row with nothing valid is the carried one."""
    g = torch.Generator().manual_seed(3)
    valid = torch.rand(4, 11, generator=g) > 0.35
    valid[3] = False
    ids = torch.randint(0, 1000, (4, 11), generator=g)
    prev = torch.tensor([7, -1, 12, 5])
    got = cp.shifted_ids(prev, ids, valid)
    want = cp.shifted_keys(prev.double()[:, None], ids.double()[..., None], valid)[..., 0].long()
    assert torch.equal(got, want)
    for b in range(4):  # the rule, spelled out
        last = int(prev[b])
        for t in range(11):
            assert int(got[b, t]) == last
            if valid[b, t]:
                last = int(ids[b, t])
        assert int(cp.last_valid_id(prev, ids, valid)[b]) == last


def test_config_copy_tok_rank_is_validated_and_versioned():
    d = DeltaMemConfig(copy_rank=64, copy_tok_rank=32).to_dict()
    assert d["copy_tok_rank"] == 32 and d["format_version"] == 3
    assert DeltaMemConfig.from_dict(d) == DeltaMemConfig(copy_rank=64, copy_tok_rank=32)
    assert "copy_tok_rank" not in DeltaMemConfig(copy_rank=64).to_dict()  # the version-2 form, key for key
    with pytest.raises(ValueError, match="copy_tok_rank needs a copy channel"):
        DeltaMemConfig(copy_tok_rank=8)
    for bad in (-1, 2.0, True, 5000):
        with pytest.raises(ValueError, match="copy_tok_rank"):
            DeltaMemConfig(copy_rank=4, copy_tok_rank=bad)


def test_state_prev_id_stacks_selects_and_serialises():
    a = DeltaState.zeros(2, 1, 1, 3, 0, copy=(5, 6, True))
    assert a.prev_id.tolist() == [-1] and a.prev_id.dtype == torch.long
    b = a.clone()
    b.C.normal_()
    b.prev_id.fill_(41)
    assert b.copy_nbytes() == 4 * (5 * 6 + 5) + 8 and not a.equal(b)
    both = DeltaState.stack([a, b])
    assert both.prev_id.tolist() == [-1, 41] and both.select(1).equal(b)
    blob = b.to_bytes()
    assert b'"format_version":"3"' in blob
    back, _ = DeltaState.from_bytes(blob)
    assert back.equal(b) and back.prev_id.tolist() == [41]
    back.check_compatible(2, 1, 3, 0, copy=(5, 6, True))
    with pytest.raises(InvalidStateError, match="no token keys"):
        back.check_compatible(2, 1, 3, 0, copy=(5, 6))
    no_ids = DeltaState.zeros(2, 1, 1, 3, 0, copy=(5, 6))
    assert b'"format_version":"2"' in no_ids.to_bytes()  # without token keys: the version-2 format
    assert no_ids.with_copy(5, 6, tokens=True).prev_id.tolist() == [-1]
    with pytest.raises(InvalidStateError, match="prev_id"):
        DeltaState.stack([a, no_ids])
    from safetensors.torch import save

    def blob_with(**t):
        base = {k: getattr(b, k) for k in ("S", "pend_sum", "pend_count", "pend_id")}
        return save({**base, **t}, metadata={"format": "deltamem-state", "format_version": "3"})

    with pytest.raises(InvalidStateError, match="prev_id without"):
        DeltaState.from_bytes(blob_with(prev_id=b.prev_id))
    with pytest.raises(InvalidStateError, match="int64"):
        DeltaState.from_bytes(blob_with(C=b.C, prev_h=b.prev_h, prev_id=b.prev_id.float()))
    with pytest.raises(InvalidStateError, match="prev_id has shape"):
        DeltaState.from_bytes(blob_with(C=b.C, prev_h=b.prev_h, prev_id=torch.tensor([1, 2])))
