"""The inference fast path of one δ-mem layer: the same math as `DeltaMemLayer.step`, with fewer ops.

Used only without autograd (serving, evaluation); training and every diagnostic capture use the reference
`DeltaMemLayer.step`, which stays the definition (tests/patching/test_fastpath.py checks the two agree).
What it saves, per layer and call:
  - one matmul for q̂, k̂, v and β (the four projections' weights stacked, built once and cached while the
    parameters are unchanged), one tanh and one normalisation for q̂ and k̂ together;
  - message writes (SSW): only the query projection, the other three are unused at read time;
  - tokens that are not written (write_threshold not reached, system prompt): no gate coefficients, no scan;
  - a single token (decoding): the read and the delta update as three small batched matmuls, no scan set-up;
  - a zero incoming state with one token: no read at all (the read and the corrections are exactly 0);
  - δq and δo from one matmul of the read against both correction matrices (each pre-scaled by α/r).
On CPU the write skip is decided on the host (a bool of a handful of values); on other devices it is a
masked update, so decoding never waits on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import scan

if TYPE_CHECKING:
    from .memory import DeltaMemLayer
    from .segments import Segments

_ENABLED = True
_VERSION = attrgetter("_version")


def set_enabled(flag: bool) -> bool:
    """Turn the fast path on or off for every layer (off: the reference `step` everywhere); returns the old value."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(flag)
    return old


def enabled() -> bool:
    return _ENABLED


@dataclass
class FusedWeights:
    proj: Tensor  # [3R+G, d]: memory_q_proj, memory_k_proj, memory_v_proj, beta_proj stacked
    bias: Tensor  # [3R+G]: (0, 0, 0, beta_bias) − proj·input_center (the centring folded in)
    corr: Tensor | None  # [q_out + o_out, R]: (α/r)·B_q then (α/r)·B_o (the present ones)
    q_out: int  # rows of `corr` that belong to δq (0 without a q head)
    native: tuple | None = None  # the compiled decode step's constant arguments (core/native.py), pointing here


def fused_weights(layer: DeltaMemLayer) -> FusedWeights:
    """The layer's stacked weights, rebuilt whenever a parameter changed (version counter) or moved."""
    cached = layer.__dict__.get("_fused")
    if cached is not None:
        params, key, fw = cached
        if list(map(_VERSION, params)) + list(map(Tensor.data_ptr, params)) == key:
            return fw
    params = list(layer.parameters()) + [b for b in layer.buffers()]
    key = list(map(_VERSION, params)) + list(map(Tensor.data_ptr, params))
    with torch.no_grad():
        proj = torch.cat([layer.memory_q_proj, layer.memory_k_proj, layer.memory_v_proj, layer.beta_proj]).float()
        R = layer.memory_q_proj.shape[0]
        bias = torch.cat([proj.new_zeros(3 * R), layer.beta_bias.float()])
        if layer.input_center is not None:  # W(x − c) + b = Wx + (b − Wc)
            bias = bias - proj @ layer.input_center.float()
        s = layer.cfg.scaling
        parts = [s * B.float() for B in (layer.delta_q_proj, layer.delta_o_proj) if B is not None]
        corr = torch.cat(parts).contiguous() if parts else None
        q_out = layer.delta_q_proj.shape[0] if layer.delta_q_proj is not None else 0
    fw = FusedWeights(proj.contiguous(), bias.contiguous(), corr, q_out)
    layer.__dict__["_fused"] = (params, key, fw)
    return fw


@dataclass
class FastStep:
    read: Tensor | None  # [B,T,R] fp32, or None when it is exactly zero (zero state, one token)
    S: Tensor
    pend_sum: Tensor


def usable() -> bool:
    """The fast path applies: enabled and no autograd (training always runs the reference code)."""
    return _ENABLED and not torch.is_grad_enabled()


def corrections(fw: FusedWeights, read: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """read[B,T,R] -> (δq, δo) from one matmul (fp32; None for an absent head)."""
    if fw.corr is None:
        return None, None
    both = F.linear(read, fw.corr)
    n = both.shape[-1]
    if 0 < fw.q_out < n:
        dq, do = both.split((fw.q_out, n - fw.q_out), dim=-1)
        return dq, do
    return (both, None) if fw.q_out else (None, both)


def step(layer: DeltaMemLayer, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments, write: bool,
         state_zero: bool = False, fw: FusedWeights | None = None) -> FastStep:
    """x[B,T,d], S[B,H,r,r], pend_sum[B,d] -> reads and new state (as `DeltaMemLayer.step`, without stats).
    `state_zero`: the caller knows S is all zeros (then one token reads exactly 0); `fw`: `fused_weights(layer)`."""
    fw = fw if fw is not None else fused_weights(layer)
    if layer.cfg.write_granularity != "token":
        return _message(layer, fw, x, S, pend_sum, seg, write, state_zero)
    return _token(layer, fw, x, S, pend_sum, seg, write, state_zero)


def _qk(layer: DeltaMemLayer, qk: Tensor) -> Tensor:
    """[..., 2, H, r] raw q/k projections -> q̂, k̂ (tanh + normalise per head, as `project`)."""
    if layer.cfg.normalize_qk:
        return F.normalize(torch.tanh(qk), dim=-1, eps=1e-6)
    return qk


def _read_only(S: Tensor, q: Tensor, seg: Segments) -> Tensor:
    """Every token reads the incoming state: q[B,T,H,r] -> read [B,T,R] (as the reference's read-only path)."""
    read = torch.einsum("bhij,bthj->bthi", S.float(), q).flatten(2)
    return read * seg.valid[..., None]


def _token(layer: DeltaMemLayer, fw: FusedWeights, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments,
           write: bool, state_zero: bool) -> FastStep:
    B, T, _ = x.shape
    if B == 1 and T == 1 and x.device.type == "cpu":
        return _decode_host(layer, fw, x, S, pend_sum, write and bool(seg.written), state_zero)
    cfg = layer.cfg
    H, r = cfg.num_state_heads, cfg.rank
    R = H * r
    p = F.linear(x.float(), fw.proj, fw.bias)  # [B,T,3R+G]
    qk = _qk(layer, p[..., : 2 * R].unflatten(-1, (2, H, r)))  # [B,T,2,H,r]
    q, k = qk[:, :, 0], qk[:, :, 1]
    if not write:
        return FastStep(None if (state_zero and T == 1) else _read_only(S, q, seg), S, pend_sum)
    beta = torch.sigmoid(p[..., 3 * R :])
    beta = beta.unflatten(-1, (H, r)) if cfg.rankwise_gates else beta.unsqueeze(-1).expand(B, T, H, r)
    written = layer.selected(beta, seg.written)  # [B,T]
    host = x.device.type == "cpu"
    if host and not bool(written.any()):  # nothing written: the state is only read
        return FastStep(None if (state_zero and T == 1) else _read_only(S, q, seg), S, pend_sum)
    v = p[..., 2 * R : 3 * R].unflatten(-1, (H, r))
    if T == 1:
        return _token_one(layer, S, qk, v, beta, written, seg, pend_sum, state_zero, host)
    keep, erase, wr = layer.coefficients(beta)
    nowrite = (~written)[..., None, None]
    keep = keep.masked_fill(nowrite, 1.0)
    erase = erase.masked_fill(nowrite, 0.0)
    wr = wr.masked_fill(nowrite, 0.0)
    mask = seg.valid[:, None, :].expand(B, H, T).flatten(0, 1)
    flat = layer._flat
    reads, S_new = scan(flat(q), flat(k), flat(v), flat(keep), flat(erase), flat(wr), S.flatten(0, 1).float(), mask)
    read = reads.unflatten(0, (B, H)).permute(0, 2, 1, 3).flatten(2)
    return FastStep(read, S_new.unflatten(0, (B, H)), pend_sum)


def _token_one(layer: DeltaMemLayer, S: Tensor, qk: Tensor, v: Tensor, beta: Tensor, written: Tensor,
               seg: Segments, pend_sum: Tensor, state_zero: bool, host: bool) -> FastStep:
    """One token: read = S q̂, S' = κ⊙S + (ω⊙v − ε⊙(S k̂)) k̂ᵀ, kept only where the token is written.
    qk [B,1,2,H,r]; on the host with B = 1 the caller already knows the token is written (and so valid)."""
    S = S.float()
    B = S.shape[0]
    exact_row = host and B == 1
    k = qk[:, 0, 1]  # [B,H,r]
    if state_zero:
        read, sk = None, None
    else:
        both = S @ qk[:, 0].permute(0, 2, 3, 1)  # [B,H,r,2]: S q̂ and S k̂
        read = both[..., 0].reshape(B, 1, -1)
        read = read if exact_row else read * seg.valid[..., None]
        sk = both[..., 1]
    keep, erase, wr = layer.coefficients(beta[:, 0])  # [B,H,r]
    u = wr * v[:, 0] if sk is None else wr * v[:, 0] - erase * sk
    base = S if layer.cfg.state_update_mode == "no_lambda" else keep.unsqueeze(-1) * S
    new = torch.baddbmm(base.flatten(0, 1), u.flatten(0, 1).unsqueeze(-1), k.flatten(0, 1).unsqueeze(-2))
    new = new.view_as(S)
    if not exact_row:
        new = torch.where(written[:, 0, None, None, None], new, S)
    return FastStep(read, new, pend_sum)


def _decode_host(layer: DeltaMemLayer, fw: FusedWeights, x: Tensor, S: Tensor, pend_sum: Tensor, write: bool,
                 state_zero: bool) -> FastStep:
    """One token of one conversation on the host, in as few tensor ops as the math allows (each op costs
    several µs of dispatch, far more than its arithmetic at these sizes)."""
    cfg = layer.cfg
    H, r = cfg.num_state_heads, cfg.rank
    R = H * r
    qk, v, beta = F.linear(x.reshape(1, -1).float(), fw.proj, fw.bias)[0].split((2 * R, R, fw.proj.shape[0] - 3 * R))
    if write:
        beta = torch.sigmoid(beta)
        beta = beta.view(H, r, 1) if cfg.rankwise_gates else beta.view(H, 1, 1).expand(H, r, 1)
        if cfg.write_threshold > 0 and float(beta.mean()) < cfg.write_threshold:
            write = False  # not selected: read only
    qk = qk.view(2, H, r)
    if cfg.normalize_qk:  # F.normalize, op for op
        qk = torch.tanh(qk)
        qk = qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(1e-6)
    if state_zero:
        read, sk = None, None
    else:
        read, sk = torch.matmul(S, qk.permute(1, 2, 0)).unbind(-1)  # S q̂ and S k̂: [1,H,r] each
        read = read.view(1, 1, R)
    if not write:
        return FastStep(read, S, pend_sum)
    v, k = v.view(H, r, 1), qk[1].unsqueeze(-2)  # value as a column, key as a row
    if cfg.state_update_mode == "no_lambda":  # κ = 1, ε = ω = β: S + β⊙(v − S k̂) k̂ᵀ
        u = beta * v if sk is None else beta * (v - sk.view(H, r, 1))
        return FastStep(read, torch.addcmul(S, u, k), pend_sum)
    keep, erase, wr = layer.coefficients(beta)  # [H,r,1]
    u = wr * v if sk is None else wr * v - erase * sk.view(H, r, 1)
    return FastStep(read, torch.addcmul(keep * S, u, k), pend_sum)


def _message(layer: DeltaMemLayer, fw: FusedWeights, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments,
             write: bool, state_zero: bool) -> FastStep:
    """Message writes: nothing closes in this call (the usual decode step) -> only q̂ is needed."""
    if write and seg.n_closed_max > 0:  # a message closes: the reference path (rare, once per message)
        st = layer.step(x, S, pend_sum, seg, write)
        return FastStep(st.read, st.S, st.pend_sum)
    B, T, _ = x.shape
    H, r = layer.cfg.num_state_heads, layer.cfg.rank
    R = H * r
    q = F.linear(x.float(), fw.proj[:R], fw.bias[:R]).unflatten(-1, (H, r))
    q = F.normalize(torch.tanh(q), dim=-1, eps=1e-6) if layer.cfg.normalize_qk else q
    read = None if (state_zero and T == 1) else _read_only(S, q, seg)
    new_sum = pend_sum if not write else pend_sum + seg.sum_open(x)
    return FastStep(read, S, new_sum)
