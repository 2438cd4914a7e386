"""Tests for the gated delta-rule scan (naive, chunked, dispatcher, all-states)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import deltamem_agents.core.scan as scan_mod
from deltamem_agents.core.scan import scan, scan_chunked, scan_naive, scan_states

NAMES = ("q", "k", "v", "keep", "erase", "write", "state")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and avoids contention stalls."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a-b| / max(1, max|b|), computed in float64."""
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def make_inputs(n: int, t: int, r: int, seed: int) -> dict[str, torch.Tensor]:
    """Random δ-mem inputs (float32): tanh+L2 q, k; raw v; κ = 1-β, ε = ω = β with some
    β ≈ 0 and ≈ 1; non-zero state; mask with leading/trailing padding in row 0 and an
    all-False row 1 (if N > 1)."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.tanh(torch.randn(n, t, r, generator=g)), dim=-1)
    k = F.normalize(torch.tanh(torch.randn(n, t, r, generator=g)), dim=-1)
    v = torch.randn(n, t, r, generator=g)
    logit = 3.0 * torch.randn(n, t, r, generator=g)
    pick = torch.rand(n, t, r, generator=g)
    logit = torch.where(pick < 0.1, torch.full_like(logit, 7.0), logit)    # β ≈ 1 (κ ≈ 1e-3)
    logit = torch.where(pick > 0.9, torch.full_like(logit, -7.0), logit)   # β ≈ 0
    beta = torch.sigmoid(logit)
    state = torch.randn(n, r, r, generator=g)
    mask = torch.rand(n, t, generator=g) > 0.25
    lead, trail = min(2, t), min(3, max(t - 2, 0))
    mask[0, :lead] = False                                                  # leading padding
    if trail:
        mask[0, t - trail:] = False                                         # trailing padding
    if n > 1:
        mask[1] = False                                                     # all-False row
    return dict(q=q, k=k, v=v, keep=1 - beta, erase=beta, write=beta.clone(),
                state=state, mask=mask)


def ref_scan(q, k, v, keep, erase, write, state, mask=None):
    """Independent float64 reference of the recurrence."""
    q, k, v, keep, erase, write, S = (x.double() for x in (q, k, v, keep, erase, write, state))
    n, t_len, r = q.shape
    mask = torch.ones(n, t_len, dtype=torch.bool) if mask is None else mask
    reads = []
    for t in range(t_len):
        mt = mask[:, t, None].double()
        reads.append((S @ q[:, t, :, None]).squeeze(-1) * mt)
        sk = (S @ k[:, t, :, None]).squeeze(-1)
        new = keep[:, t, :, None] * S + ((write[:, t] * v[:, t] - erase[:, t] * sk)[..., None]
                                         * k[:, t, None, :])
        S = torch.where(mask[:, t, None, None], new, S)
    rd = torch.stack(reads, 1) if reads else q.new_zeros(n, 0, r)
    return rd, S


def run_with_grads(fn, inp: dict, dtype: torch.dtype, seed: int = 123, **kw):
    """Run ``fn`` with leaf copies in ``dtype``; return reads, state and input grads."""
    leaves = {nm: inp[nm].to(dtype).requires_grad_(True) for nm in NAMES}
    reads, S = fn(*(leaves[nm] for nm in NAMES), inp["mask"], **kw)
    g = torch.Generator().manual_seed(seed)
    loss = ((reads * torch.randn(reads.shape, generator=g).to(reads.dtype)).sum()
            + (S * torch.randn(S.shape, generator=g).to(S.dtype)).sum())
    grads = torch.autograd.grad(loss, [leaves[nm] for nm in NAMES])
    return reads.detach(), S.detach(), dict(zip(NAMES, grads))


@pytest.mark.parametrize("chunk", [8, 16, 64])
@pytest.mark.parametrize("r", [4, 8, 13])
@pytest.mark.parametrize("t", [1, 5, 37, 130, 257])
def test_chunked_matches_reference_with_grads(t: int, r: int, chunk: int) -> None:
    n = 3 if (t + r) % 2 else 1
    inp = make_inputs(n, t, r, seed=1000 * t + 10 * r + chunk)
    rd_ref, s_ref, g_ref = run_with_grads(ref_scan, inp, torch.float64)
    rd, s, g = run_with_grads(scan_chunked, inp, torch.float32, chunk_size=chunk)
    assert rd.dtype == s.dtype == torch.float32
    assert rel_err(rd, rd_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5
    for nm in NAMES:
        assert torch.isfinite(g[nm]).all(), nm
        assert rel_err(g[nm], g_ref[nm]) <= 1e-4, nm


@pytest.mark.parametrize("n,t,r", [(1, 37, 8), (3, 130, 8), (3, 257, 13)])
def test_naive_and_chunked_forward(n: int, t: int, r: int) -> None:
    inp = make_inputs(n, t, r, seed=7 + t)
    args = [inp[nm] for nm in NAMES] + [inp["mask"]]
    rd_ref, s_ref = ref_scan(*args)
    for rd, s in (scan_naive(*args), scan_chunked(*args), scan(*args)):
        assert rel_err(rd, rd_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


def test_naive_grads_match_reference() -> None:
    inp = make_inputs(3, 37, 8, seed=5)
    _, _, g_ref = run_with_grads(ref_scan, inp, torch.float64)
    _, _, g = run_with_grads(scan_naive, inp, torch.float32)
    for nm in NAMES:
        assert rel_err(g[nm], g_ref[nm]) <= 1e-4, nm


@pytest.mark.parametrize("block_elems", [1, 700])
def test_blocks_of_chunks(monkeypatch, block_elems: int) -> None:
    """Several blocks of chunks (1 or a few chunks per block) give the same result."""
    monkeypatch.setattr(scan_mod, "_BLOCK_ELEMS", block_elems)
    inp = make_inputs(3, 101, 5, seed=17)
    rd_ref, s_ref, g_ref = run_with_grads(ref_scan, inp, torch.float64)
    rd, s, g = run_with_grads(scan_chunked, inp, torch.float32, chunk_size=8)
    assert rel_err(rd, rd_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    for nm in NAMES:
        assert rel_err(g[nm], g_ref[nm]) <= 1e-4, nm


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), t=st.integers(0, 20), r=st.integers(1, 5),
       chunk=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_property_chunked_equals_reference(n: int, t: int, r: int, chunk: int, seed: int) -> None:
    inp = make_inputs(n, t, r, seed)
    args = [inp[nm] for nm in NAMES] + [inp["mask"]]
    rd_ref, s_ref = ref_scan(*args)
    rd, s = scan_chunked(*args, chunk_size=chunk)
    assert rd.shape == (n, t, r) and s.shape == (n, r, r)
    assert rel_err(rd, rd_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5


@pytest.mark.parametrize("fn", [scan_naive, scan_chunked])
def test_masked_tokens_are_noops(fn) -> None:
    inp = make_inputs(3, 40, 6, seed=11)
    args = [inp[nm] for nm in NAMES]
    m = inp["mask"]
    rd, s = fn(*args, m)
    assert (rd[~m] == 0).all()
    assert torch.equal(s[1], inp["state"][1])                                # all-False row
    states = scan_states(*args[1:], m)
    unchanged = (states[:, 1:] == states[:, :-1]).flatten(2).all(-1)        # [N, T]
    assert unchanged[~m].all()
    # Garbage (even NaN) in masked positions must not leak into the chunked result.
    dirty = [a.clone() for a in args]
    for a in dirty[:6]:
        a[~m] = float("nan")
    rd2, s2 = scan_chunked(*dirty, m, chunk_size=16)
    assert torch.allclose(rd2, rd, atol=1e-5) and torch.allclose(s2, s, atol=1e-5)


@pytest.mark.parametrize("fn", [scan_naive, scan_chunked, scan])
def test_split_equals_single_call(fn) -> None:
    inp = make_inputs(3, 90, 8, seed=3)
    seq = [inp[nm] for nm in NAMES[:6]]
    m = inp["mask"]
    rd, s = fn(*seq, inp["state"], m)
    cut = 41
    rd1, s1 = fn(*(x[:, :cut] for x in seq), inp["state"], m[:, :cut])
    rd2, s2 = fn(*(x[:, cut:] for x in seq), s1, m[:, cut:])
    assert rel_err(torch.cat([rd1, rd2], 1), rd) <= 1e-5
    assert rel_err(s2, s) <= 1e-5


def test_scan_states_consistency() -> None:
    inp = make_inputs(3, 30, 5, seed=9)
    args = [inp[nm] for nm in NAMES] + [inp["mask"]]
    states = scan_states(*args[1:])
    assert states.shape == (3, 31, 5, 5) and states.dtype == torch.float32
    _, s_final = scan(*args)
    assert rel_err(states[:, -1], s_final) <= 1e-5
    assert torch.equal(states[:, 0], inp["state"])
    for t in (1, 7, 19, 30):
        _, s_t = ref_scan(*(a[:, :t] for a in args[:6]), inp["state"], inp["mask"][:, :t])
        assert rel_err(states[:, t], s_t) <= 1e-5
    # entry t is the state the read at step t uses
    rd, _ = scan_naive(*args)
    rd_states = torch.einsum("ntij,ntj->nti", states[:, :-1], inp["q"]) * inp["mask"][..., None]
    assert rel_err(rd_states, rd) <= 1e-6


@pytest.mark.parametrize("fn", [scan_naive, scan_chunked, scan])
def test_empty_sequence(fn) -> None:
    inp = make_inputs(2, 0, 4, seed=0)
    st0 = inp["state"].requires_grad_(True)
    rd, s = fn(*(inp[nm] for nm in NAMES[:6]), st0, inp["mask"])
    assert rd.shape == (2, 0, 4) and rd.dtype == torch.float32
    assert torch.equal(s, inp["state"])
    s.sum().backward()
    assert torch.equal(st0.grad, torch.ones_like(st0))
    assert scan_states(*(inp[nm] for nm in NAMES[1:])).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("fn", [scan_naive, scan_chunked, scan])
def test_bf16_inputs_give_fp32(fn) -> None:
    inp = make_inputs(2, 20, 8, seed=4)
    b16 = [inp[nm].to(torch.bfloat16) for nm in NAMES]
    rd, s = fn(*b16, inp["mask"])
    assert rd.dtype == torch.float32 and s.dtype == torch.float32
    rd_ref, s_ref = ref_scan(*b16, inp["mask"])
    assert rel_err(rd, rd_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        rd_a, s_a = fn(*(inp[nm] for nm in NAMES), inp["mask"])
    assert rd_a.dtype == torch.float32 and s_a.dtype == torch.float32
    assert scan_states(*b16[1:], inp["mask"]).dtype == torch.float32


@pytest.mark.parametrize("fn", [scan_naive, scan_chunked])
def test_rows_are_independent(fn) -> None:
    inp = make_inputs(2, 50, 6, seed=21)
    args = [inp[nm] for nm in NAMES] + [inp["mask"]]
    rd, s = fn(*args)
    row = 2
    other = [i for i in range(6) if i != row]
    g = torch.Generator().manual_seed(1)
    changed = list(args)
    for idx in (3, 4, 5):                                                   # keep, erase, write
        x = args[idx].clone()
        x[..., row] = torch.rand(x[..., row].shape, generator=g)
        changed[idx] = x
    rd2, s2 = fn(*changed)
    assert torch.allclose(rd2[..., other], rd[..., other], atol=1e-6, rtol=0)
    assert torch.allclose(s2[:, other], s[:, other], atol=1e-6, rtol=0)
    assert not torch.allclose(rd2[..., row], rd[..., row])


@pytest.mark.parametrize("chunk", [4, 16])
def test_saturated_gates_zero_keep(chunk: int) -> None:
    """β that saturates to exactly 1 in fp32 (κ = 0: hard reset); gradients stay exact."""
    inp = make_inputs(2, 40, 4, seed=2)
    beta = torch.sigmoid(8.0 * torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(0)))
    beta[:, ::3] = torch.sigmoid(torch.tensor(30.0))
    assert (beta == 1).any()
    inp.update(keep=1 - beta, erase=beta, write=beta.clone())
    rd_ref, s_ref, g_ref = run_with_grads(ref_scan, inp, torch.float64)
    rd, s, g = run_with_grads(scan_chunked, inp, torch.float32, chunk_size=chunk)
    assert rel_err(rd, rd_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    for nm in NAMES:
        assert torch.isfinite(g[nm]).all(), nm
        assert rel_err(g[nm], g_ref[nm]) <= 1e-4, nm


def test_dispatcher() -> None:
    for t in (8, 9):
        inp = make_inputs(2, t, 4, seed=t)
        args = [inp[nm] for nm in NAMES] + [inp["mask"]]
        expect = scan_naive(*args) if t <= 8 else scan_chunked(*args)
        got = scan(*args)
        assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])


def test_single_step_fast_path_matches_naive():
    """The T = 1 decode fast path equals the naive loop, with masks, forward and backward."""
    from deltamem_agents.core.scan import scan, scan_naive

    g = torch.Generator().manual_seed(5)
    N, r = 3, 7
    q, k = (torch.nn.functional.normalize(torch.randn(N, 1, r, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(N, 1, r, generator=g)
    beta = torch.rand(N, 1, r, generator=g)
    S0 = torch.randn(N, r, r, generator=g)
    mask = torch.tensor([[True], [False], [True]])
    ins = [t.clone().requires_grad_(True) for t in (q, k, v, 1 - beta, beta, beta, S0)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v, 1 - beta, beta, beta, S0)]
    a = scan(*ins, mask)
    b = scan_naive(*ref, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    (a[0].sum() + a[1].pow(2).sum()).backward()
    (b[0].sum() + b[1].pow(2).sum()).backward()
    for x, y in zip(ins, ref):
        torch.testing.assert_close(x.grad, y.grad)
