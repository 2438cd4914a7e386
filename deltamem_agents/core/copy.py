"""The copy channel: one delta-rule memory per session whose values are token embeddings, read into the logits.

The q/o read path of the δ layers carries information about an open-set value (a name, a number) but cannot
spell it; a read path that can copy a token can. One state per session at the top of the frozen model,
C ∈ R^{d×r} (d = the hidden width, r = key dimensions), with h the backbone's final normed hidden state (the
input of the LM head) and h_{t-1} the hidden state at the position before token x_t (the one predicting x_t)::

    write x_t:  k = norm(W_k h_{t-1}),  β = σ(w_β·h_{t-1} + b_β),  v = ê(x_t)    (ê: unit-normalised embedding row)
                C ← C + β (v − C k) kᵀ                                       (gated delta rule, fp32, no decay)
    read at p:  q = norm(W_q h_p),  o = C q,  g = τ·softplus(w_g·h_p + b_g)
                logits_p = lm_head(h_p) + g · Ê o                            (Ê: all unit-normalised embedding rows)

With token keys (`DeltaMemConfig.copy_tok_rank` = r_t > 0) each key and query gets r_t more dimensions from a
token: the one before the written token, and the one at the reading position (the token that precedes the one being
predicted), through a shared W_t [r_t, d], mixed by a trained angle α::

    write x_t:  k = [cos α · norm(W_k h_{t-1}),  sin α · norm(W_t ê(x_{t-1}))]
    read at p:  q = [cos α · norm(W_q h_p),      sin α · norm(W_t ê(x_p))]

so the tokens of a value (the digits of a number, the pieces of an id) are told apart by what precedes them, as an
induction head does; C is then [d, r + r_t]. A position with no token before it (the session's first) gets a zero
token part, as its hidden-state part is zero (the state's prev_h starts at zero): its write changes nothing.

The write gate β comes in two kinds (`DeltaMemConfig.copy_gate`). "token" is the linear gate above.
"message" is an MLP that sees the message the token belongs to (`message_gate_inputs`)::

    β_t = σ(MLP([h_{t-1}, h_t, mean_{s ∈ m(t)} h_{s-1}]))      (h_t := 0 for the last token of its message)

with m(t) the valid positions of the call carrying t's message id: the message is whatever of it this call holds
(a message fed in slices over several calls has the mean of each slice).

Reads are causal and come *after* the write of the same position: the read at p sees tokens ≤ p (x_p is written
with key h_{p-1}, which p's own hidden state follows).

Two exact forms of the write scan with one signature (`scan_naive`, the per-token loop, is the reference;
`scan_chunked` the fast form; `scan` dispatches). Chunked form (WY/UT, no decay, one scalar β per token shared by
every row of C): within a chunk of length c starting from C_0, with u_t = β_t (v_t − C_{t-1} k_t) stacked as rows
of U [c, d]::

    (I + L) U = diag(β) (V − K C_0ᵀ),   L = strict_lower(diag(β) K Kᵀ)
    C_c = C_0 + Uᵀ K,                   O = Q C_0ᵀ + lower(Q Kᵀ) U       (reads after write, diagonal included)

The solve does not depend on C_0, so it runs for all chunks at once (U = W_v − W_k C_0ᵀ); only C_0 is carried
from chunk to chunk (two small matmuls each).

Reading needs, per vocabulary row, ê_i·o = (e_i·o)/‖e_i‖: the norms are computed once per embedding matrix
(`embedding_norms`, cached) and Ê is never materialised except by the reference `read_naive`. For a model whose
LM head *is* the embedding (tied weights), the base logits and the read are one matmul of E with the columns
[h, g·o] (`tied_logits`): one pass over the [V, d] matrix instead of two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import COPY_GATES as GATES  # the write gate's kinds (module docstring)

__all__ = ["CopyChannel", "COPY_PARAMS", "GATES", "copy_params", "message_gate_inputs", "message_gate_inputs_naive",
           "scan", "scan_naive", "scan_chunked", "shifted_keys", "last_valid", "read_naive", "read_generic",
           "tied_logits", "embedding_norms", "values", "shifted_ids", "last_valid_id"]

_SHARED = ("wk.weight", "wq.weight", "gate.weight", "gate.bias", "log_tau")
_GATE_PARAMS = {"token": ("beta.weight", "beta.bias"),
                "message": ("mgate.0.weight", "mgate.0.bias", "mgate.2.weight", "mgate.2.bias")}


_TOKEN_PARAMS = ("wt.weight", "mix")


def copy_params(gate: str = "token", tokens: bool = False) -> tuple[str, ...]:
    """The parameter names of a CopyChannel with write gate `gate` and, with `tokens`, token keys (the adapter
    file's keys are these under "copy.")."""
    if gate not in GATES:
        raise ValueError(f"copy gate must be one of {GATES}, got {gate!r}")
    return _SHARED[:2] + _GATE_PARAMS[gate] + _SHARED[2:] + (_TOKEN_PARAMS if tokens else ())


COPY_PARAMS = copy_params("token")

_NAIVE_MAX_T = 8
_CHUNK = 32


class CopyChannel(nn.Module):
    """The copy channel's trained parameters: W_k, W_q [r, d], the write gate (gate "token": `beta`, a
    Linear(d, 1); gate "message": `mgate`, Linear(3d, gate_hidden) → GELU → Linear(gate_hidden, 1)), the read
    gain (Linear(d, 1)), log τ and, with token keys (tok_rank > 0), W_t [r_t, d] and the mixing angle α (`mix`).
    Names match the lab's `CopyHead` (token gate) and `MessageGate` (`net` there, `mgate` here), so their
    checkpoints map key for key."""

    def __init__(self, hidden: int, rank: int, *, beta_bias: float = -4.0, gate_bias: float = 0.0,
                 tau: float = 10.0, gate: str = "token", gate_hidden: int = 256, tok_rank: int = 0) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"copy gate must be one of {GATES}, got {gate!r}")
        self.hidden, self.rank, self.gate_kind, self.tok_rank = hidden, rank, gate, tok_rank
        self.wk = nn.Linear(hidden, rank, bias=False)
        self.wq = nn.Linear(hidden, rank, bias=False)
        if gate == "token":
            self.beta = nn.Linear(hidden, 1)
        else:
            self.mgate = nn.Sequential(nn.Linear(3 * hidden, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, 1))
        self.gate = nn.Linear(hidden, 1)
        self.log_tau = nn.Parameter(torch.tensor(float(tau)).log())
        nn.init.normal_(self.wk.weight, std=hidden ** -0.5)
        with torch.no_grad():
            self.wq.weight.copy_(self.wk.weight)  # queries start in the keys' space
            if gate == "token":
                self.beta.weight.zero_()
                self.beta.bias.fill_(beta_bias)
            else:
                self.mgate[2].bias.fill_(beta_bias)
            self.gate.weight.zero_()
            self.gate.bias.fill_(gate_bias)
        if tok_rank:  # token keys (module docstring); created last, so the other parameters start as without them
            self.wt = nn.Linear(hidden, tok_rank, bias=False)
            nn.init.normal_(self.wt.weight, std=hidden ** -0.5)
            self.mix = nn.Parameter(torch.tensor(math.pi / 4))

    @property
    def key_dims(self) -> int:
        """Columns of the state C: r, plus r_t with token keys."""
        return self.rank + self.tok_rank

    def _token_keyed(self, k: Tensor, ids: Tensor | None, embedding: Tensor | None) -> Tensor:
        """[cos α · k, sin α · norm(W_t ê(ids))] with token keys (a zero token part where ids < 0); k otherwise."""
        if not self.tok_rank:
            return k
        if ids is None or embedding is None:
            raise ValueError("a copy channel with token keys needs the token ids and the embedding")
        t = F.normalize(self.wt(values(embedding, ids.clamp_min(0))), dim=-1)
        t = torch.where((ids >= 0)[..., None], t, 0.0)
        return torch.cat([k * torch.cos(self.mix), t * torch.sin(self.mix)], dim=-1)

    def key(self, h: Tensor, prev_ids: Tensor | None = None, embedding: Tensor | None = None) -> Tensor:
        """Write keys [..., key_dims] from the key-source hidden states h[..., d] (fp32); with token keys also the
        ids of the tokens before the written ones (`shifted_ids`, -1 = none) and the embedding matrix."""
        return self._token_keyed(F.normalize(self.wk(h.float()), dim=-1), prev_ids, embedding)

    def write_gates(self, h_prev: Tensor, h: Tensor, mids: Tensor | None, valid: Tensor) -> Tensor:
        """β [B, T] (fp32) for a call's positions: h_prev [B, T, d] the key-source hidden states (`shifted_keys`),
        h [B, T, d] the positions' own, mids [B, T] message ids (None: one message per row), valid [B, T]. The token
        gate reads h_prev only; the message gate `message_gate_inputs`."""
        if self.gate_kind == "token":
            return torch.sigmoid(self.beta(h_prev.float())).squeeze(-1)
        if mids is None:
            mids = torch.zeros(valid.shape, dtype=torch.long, device=valid.device)
        x = message_gate_inputs(h_prev.float(), h.float(), mids, valid)
        return torch.sigmoid(self.mgate(x)).squeeze(-1)

    def query(self, h: Tensor, ids: Tensor | None = None, embedding: Tensor | None = None) -> Tensor:
        """q̂ [..., key_dims] from the reading positions' hidden states h[..., d] (fp32); with token keys also the
        ids of the tokens at those positions and the embedding matrix."""
        return self._token_keyed(F.normalize(self.wq(h.float()), dim=-1), ids, embedding)

    def gain(self, h: Tensor) -> Tensor:
        """g = τ·softplus(w_g·h + b_g): [..., 1] (fp32)."""
        return F.softplus(self.gate(h.float())) * self.log_tau.exp()

    def state_bytes(self) -> int:
        """Extra bytes per session: C [d, key_dims] and prev_h [d], fp32, and with token keys prev_id (int64)."""
        return 4 * self.hidden * (self.key_dims + 1) + (8 if self.tok_rank else 0)


def values(embedding: Tensor, ids: Tensor) -> Tensor:
    """ê(x) for token ids [...]: unit-normalised embedding rows [..., d] (fp32)."""
    return F.normalize(F.embedding(ids, embedding).float(), dim=-1)


def _before(valid: Tensor) -> Tensor:
    """For every position t the index + 1 of the last valid position before t in its row (0 = none): [B, T]."""
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device).expand(B, T)
    last = torch.cummax(torch.where(valid, pos, torch.full_like(pos, -1)), dim=1).values  # last valid ≤ t
    return F.pad(last, (1, 0), value=-1)[:, :T] + 1  # last valid < t, shifted so that 0 = the carried value


def shifted_keys(prev_h: Tensor, h: Tensor, valid: Tensor) -> Tensor:
    """For every position t the hidden state of the last valid position before t in this call, or `prev_h` when
    there is none (the carried state of the previous call): prev_h [B, d], h [B, T, d], valid [B, T] -> [B, T, d].
    Padding anywhere in a row (left-padded batches) is skipped."""
    B, T = valid.shape
    src = torch.cat([prev_h[:, None].to(h.dtype), h], dim=1)  # index 0 = prev_h
    return src.gather(1, _before(valid)[..., None].expand(B, T, h.shape[-1]))


def shifted_ids(prev_id: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
    """`shifted_keys` for token ids: for every position the id of the last valid token before it in this call, or
    `prev_id` [B] (the carried last token, -1 = none) when there is none: ids [B, T] -> [B, T] (long)."""
    return torch.cat([prev_id.long()[:, None], ids.long()], dim=1).gather(1, _before(valid))


def last_valid(prev_h: Tensor, h: Tensor, valid: Tensor) -> Tensor:
    """The hidden state of each row's last valid position [B, d] (prev_h for a row with none)."""
    T = valid.shape[1]
    return shifted_keys(prev_h, F.pad(h, (0, 0, 0, 1)), F.pad(valid, (0, 1)))[:, T]


def last_valid_id(prev_id: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
    """The id of each row's last valid token [B] (prev_id for a row with none)."""
    T = valid.shape[1]
    return shifted_ids(prev_id, F.pad(ids.long(), (0, 1)), F.pad(valid, (0, 1)))[:, T]


def _next_valid(valid: Tensor) -> Tensor:
    """For every position the index of the next valid position after it in its row, T when there is none."""
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device).expand(B, T)
    idx = torch.where(valid, pos, torch.full_like(pos, T))
    after = F.pad(idx[:, 1:], (0, 1), value=T)  # the valid index at t+1, or T
    return torch.flip(torch.cummin(torch.flip(after, [1]), dim=1).values, [1])


def message_gate_inputs(h_prev: Tensor, h: Tensor, mids: Tensor, valid: Tensor) -> Tensor:
    """The message gate's inputs [B, T, 3d]: per position t, [h_prev_t, h_t (zeros if t is the last valid position
    of its message in this call), the mean of h_prev over the row's valid positions with t's message id].
    h_prev, h [B, T, d], mids [B, T] long, valid [B, T] bool. Padding positions get zeros."""
    B, T, d = h.shape
    mids = mids.long()
    nxt = _next_valid(valid)
    nxt_mid = torch.gather(F.pad(mids, (0, 1)), 1, nxt)  # the next valid position's message id (T: padding)
    last = (nxt == T) | (nxt_mid != mids)
    h_next = torch.where(last[..., None], 0.0, h)
    # group the valid positions by (row, message id); sum and count per group, gathered back to every position
    lo, hi = (int(mids.min()), int(mids.max())) if mids.numel() else (0, 0)
    key = torch.arange(B, device=mids.device)[:, None] * (hi - lo + 1) + (mids - lo)
    groups, inv = torch.unique(torch.where(valid, key, -1), return_inverse=True)  # -1: padding's own group
    sums = h_prev.new_zeros(len(groups), d).index_add_(0, inv.flatten(), h_prev.reshape(-1, d))
    counts = h_prev.new_zeros(len(groups)).index_add_(0, inv.flatten(), h_prev.new_ones(B * T))
    mean = (sums / counts[:, None])[inv]
    out = torch.cat([h_prev, h_next, mean], dim=-1)
    return torch.where(valid[..., None], out, 0.0)


def message_gate_inputs_naive(h_prev: Tensor, h: Tensor, mids: Tensor, valid: Tensor) -> Tensor:
    """Reference for `message_gate_inputs`: python loops over rows and positions."""
    B, T, d = h.shape
    out = h.new_zeros(B, T, 3 * d)
    for b in range(B):
        pos = [t for t in range(T) if bool(valid[b, t])]
        for i, t in enumerate(pos):
            m = int(mids[b, t])
            is_last = i + 1 == len(pos) or int(mids[b, pos[i + 1]]) != m
            same = [s for s in pos if int(mids[b, s]) == m]
            out[b, t, :d] = h_prev[b, t]
            out[b, t, d:2 * d] = 0.0 if is_last else h[b, t]
            out[b, t, 2 * d:] = sum(h_prev[b, s] for s in same) / len(same)
    return out


def _check(C: Tensor, k: Tensor, v: Tensor, beta: Tensor, q: Tensor | None) -> None:
    B, d, r = C.shape
    if k.shape[:1] != (B,) or k.shape[-1] != r or v.shape[:2] != k.shape[:2] or v.shape[-1] != d \
            or beta.shape != k.shape[:2] or (q is not None and q.shape != k.shape):
        raise ValueError(f"copy scan shapes: C {tuple(C.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"beta {tuple(beta.shape)}, q {None if q is None else tuple(q.shape)}")


def scan_naive(C: Tensor, k: Tensor, v: Tensor, beta: Tensor, q: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
    """Reference: one delta step per token. C [B, d, r]; k [B, T, r] (normalised), v [B, T, d], beta [B, T]
    (0 = not written); q [B, T, r] or None. Returns the final C and, with q, the reads after each write
    o_t = C_t q_t [B, T, d]. fp32, differentiable."""
    _check(C, k, v, beta, q)
    with torch.autocast(device_type=C.device.type, enabled=False):
        C = C.float()
        reads = []
        for t in range(k.shape[1]):
            kt, bt = k[:, t].float(), beta[:, t, None, None].float()
            err = v[:, t].float() - torch.einsum("bdr,br->bd", C, kt)
            C = C + bt * torch.einsum("bd,br->bdr", err, kt)
            if q is not None:
                reads.append(torch.einsum("bdr,br->bd", C, q[:, t].float()))
        if q is None:
            return C, None
        return C, (torch.stack(reads, 1) if reads else v.new_zeros(v.shape).float())


def scan_chunked(C: Tensor, k: Tensor, v: Tensor, beta: Tensor, q: Tensor | None = None, *,
                 chunk_size: int = _CHUNK) -> tuple[Tensor, Tensor | None]:
    """The same as `scan_naive` in the chunked WY form (module docstring)."""
    _check(C, k, v, beta, q)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    with torch.autocast(device_type=C.device.type, enabled=False):
        C = C.float()
        B, T, r = k.shape
        d = v.shape[-1]
        if T == 0:
            return C.clone(), (v.new_zeros(B, 0, d).float() if q is not None else None)
        c = min(chunk_size, T)
        nc = math.ceil(T / c)
        pad = nc * c - T

        def chunks(x: Tensor) -> Tensor:  # [B, T, n] -> [B, nc, c, n] (padding: zeros, i.e. β = 0)
            return F.pad(x.float(), (0, 0, 0, pad)).view(B, nc, c, x.shape[-1])

        K, V = chunks(k), chunks(v)
        bt = chunks(beta[..., None])  # [B, nc, c, 1]
        strict = torch.tril(torch.ones(c, c, dtype=torch.bool, device=C.device), -1)
        A = torch.where(strict, bt * (K @ K.transpose(-1, -2)), 0.0) + torch.eye(c, device=C.device)
        W = torch.linalg.solve_triangular(A, torch.cat([bt * V, bt * K], dim=-1), upper=False,
                                          unitriangular=True)
        Wv, Wk = W.split((d, r), dim=-1)  # [B, nc, c, d], [B, nc, c, r]
        starts, us = [], []
        for n in range(nc):  # sequential over chunks only
            starts.append(C)
            u = Wv[:, n] - Wk[:, n] @ C.transpose(-1, -2)  # [B, c, d]
            us.append(u)
            C = C + u.transpose(-1, -2) @ K[:, n]
        if q is None:
            return C, None
        Q = chunks(q)
        C0 = torch.stack(starts, 1)  # [B, nc, d, r]
        U = torch.stack(us, 1)  # [B, nc, c, d]
        lower = torch.tril(torch.ones(c, c, dtype=torch.bool, device=C.device))
        O = Q @ C0.transpose(-1, -2) + torch.where(lower, Q @ K.transpose(-1, -2), 0.0) @ U
        return C, O.reshape(B, nc * c, d)[:, :T]


def scan(C: Tensor, k: Tensor, v: Tensor, beta: Tensor, q: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Dispatch: the per-token loop for short calls (decoding, T ≤ 8), the chunked form otherwise."""
    if k.shape[1] <= _NAIVE_MAX_T:
        return scan_naive(C, k, v, beta, q)
    return scan_chunked(C, k, v, beta, q)


# --- reading into the logits ---------------------------------------------------------------------------------
def embedding_norms(weight: Tensor) -> Tensor:
    """‖e_i‖ of every embedding row [V] (fp32, floored at 1e-12 as F.normalize does), cached on the weight tensor
    itself (with its version and storage): computed once per model unless the embedding changes."""
    key = (weight._version, weight.data_ptr(), tuple(weight.shape), weight.device)
    cached = getattr(weight, "_deltamem_copy_norms", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        norms = torch.linalg.vector_norm(weight.detach().float(), dim=-1).clamp_min(1e-12)
    weight._deltamem_copy_norms = (key, norms)  # type: ignore[attr-defined]
    return norms


def read_naive(embedding: Tensor, col: Tensor) -> Tensor:
    """Reference read: Ê col with Ê = all unit-normalised embedding rows materialised. col [..., d] -> [..., V]."""
    return col.float() @ F.normalize(embedding.float(), dim=-1).T


def read_generic(embedding: Tensor, norms: Tensor, col: Tensor) -> Tensor:
    """Ê col = (E col) / ‖e_i‖ without materialising Ê (fp32). col [..., d] -> [..., V]."""
    if embedding.dtype == torch.float32:
        return F.linear(col.float(), embedding) / norms
    return F.linear(col.to(embedding.dtype), embedding).float() / norms


def tied_logits(weight: Tensor, bias: Tensor | None, norms: Tensor, h: Tensor, col: Tensor) -> Tensor:
    """lm_head(h) + Ê col for an LM head whose weight is the embedding, in one pass over the weight:
    [l0, l1] = E [h, col], logits = l0 (+ bias) + l1 / ‖e_i‖. h, col [B, K, d] -> [B, K, V] in h's dtype."""
    K = h.shape[-2]
    both = F.linear(torch.cat([h, col.to(h.dtype)], dim=-2), weight)  # [B, 2K, V]
    l0, l1 = both[..., :K, :], both[..., K:, :]
    if bias is not None:
        l0 = l0 + bias
    if l0.dtype == torch.float32:
        return l0 + l1 / norms
    return (l0.float() + l1.float() / norms).to(h.dtype)
