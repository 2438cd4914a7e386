"""One δ-mem layer: write/read projections, gates, the per-call state update and the low-rank corrections.

For an attention input x[B,T,d] and the layer's carried state, `DeltaMemLayer.step` returns the read vectors
read[B,T,R] (R = H·r) and the new state. Reads are causal at the write granularity:
  token writes (TSW/MSW): read_t = S_{t-1} q̂_t, then S_t = update(S_{t-1}; k̂_t, v_t, β_t)  (spec section 4.4)
  message writes (SSW):   every token of message m reads the state after messages < m; message m is written as
                          one delta step on the mean of its tokens' x once the next message starts.
The SSW read rule is the causal generalisation of the reference code (which reads the state from before the
whole forward call): it makes one pass over a conversation equal to turn-by-turn processing, which the
session runtime and the trainer both rely on (docs/design.md, section 3). With one message per call the two coincide.
Corrections: δq = (α/r)·B_q·read (added to the q_proj output), δo = (α/r)·B_o·read (added after o_proj).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DeltaMemConfig
from .scan import scan, scan_states
from .segments import Segments


# the state-independent task path's parameters (config.task_rank); an adapter saved without one lacks exactly these
TASK_PATH_PARAMS = ("task_q_down", "task_q_up", "task_o_down", "task_o_up")


@dataclass
class LayerStep:
    """Result of one layer call: reads [B,T,R], new committed state [B,H,r,r], new pending sum [B,d]."""

    read: Tensor
    S: Tensor
    pend_sum: Tensor
    beta_mean: Tensor | None  # mean write gate over written tokens/messages (for the sparsity regulariser)
    gates: Tensor | None = None  # β of every written unit [B, U, H, r] (tokens for TSW, closed messages for SSW);
    # not detached: the gate-supervision loss trains through it, diagnostics detach it (patching/wrappers.py)
    gate_mask: Tensor | None = None  # [B, U] which units were really written


class DeltaMemLayer(nn.Module):
    """Trainable δ-mem parameters of one attention layer (names follow the reference state dict)."""

    def __init__(self, cfg: DeltaMemConfig, hidden: int, q_out: int, o_out: int) -> None:
        super().__init__()
        self.cfg = cfg
        R, G = cfg.read_dim, cfg.num_gates
        self.memory_q_proj = nn.Parameter(torch.empty(R, hidden))
        self.memory_k_proj = nn.Parameter(torch.empty(R, hidden))
        self.memory_v_proj = nn.Parameter(torch.empty(R, hidden))
        self.beta_proj = nn.Parameter(torch.zeros(G, hidden))
        self.beta_bias = nn.Parameter(torch.full((G,), float(cfg.beta_bias_init)))
        self.delta_q_proj = nn.Parameter(torch.zeros(q_out, R)) if "q" in cfg.delta_heads else None
        self.delta_o_proj = nn.Parameter(torch.zeros(o_out, R)) if "o" in cfg.delta_heads else None
        for p in (self.memory_q_proj, self.memory_k_proj, self.memory_v_proj):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        # the common component of the layer's inputs, removed before projecting (None = the spec's projection)
        self.register_buffer("input_center", torch.zeros(hidden) if cfg.center_inputs else None)
        # the optional state-independent task path (config.task_rank): LoRA-style, down random, up zero, so a
        # fresh task path changes nothing; o_proj's input width is q_proj's output width (heads × head_dim)
        rt = cfg.task_rank
        self.task_q_down = nn.Parameter(torch.empty(rt, hidden)) if rt and "q" in cfg.delta_heads else None
        self.task_q_up = nn.Parameter(torch.zeros(q_out, rt)) if rt and "q" in cfg.delta_heads else None
        self.task_o_down = nn.Parameter(torch.empty(rt, q_out)) if rt and "o" in cfg.delta_heads else None
        self.task_o_up = nn.Parameter(torch.zeros(o_out, rt)) if rt and "o" in cfg.delta_heads else None
        for p in (self.task_q_down, self.task_o_down):
            if p is not None:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        assert all(hasattr(self, n) for n in TASK_PATH_PARAMS)

    @torch.no_grad()
    def init_outputs(self, base_q: Tensor | None, base_o: Tensor | None) -> None:
        """Initialise B_q/B_o per `output_init` (spec section 2); base_* are the frozen q_proj/o_proj weights."""
        for B, base in ((self.delta_q_proj, base_q), (self.delta_o_proj, base_o)):
            if B is None:
                continue
            B.zero_()
            mode, R = self.cfg.output_init, B.shape[1]
            if mode == "random":
                nn.init.kaiming_uniform_(B, a=math.sqrt(5))
                B.mul_(self.cfg.online_gain)
            elif mode in ("base_slice", "base_slice_fixed") and base is not None:
                w = min(R, base.shape[1]) if mode == "base_slice" else min(self.cfg.base_slice_ref_width, R,
                                                                             base.shape[1])
                cols = base[:, :w].float()
                B[:, :w] = cols / cols.norm(dim=0, keepdim=True).clamp_min(1e-12) * self.cfg.online_gain

    # --- projections ------------------------------------------------------------------------------------
    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x[..., d] -> q̂, k̂, v, β each [..., H, r] (fp32; β broadcast over r without rank-wise gates)."""
        H, r = self.cfg.num_state_heads, self.cfg.rank
        x = x.float()
        if self.input_center is not None:
            x = x - self.input_center
        q = F.linear(x, self.memory_q_proj).unflatten(-1, (H, r))
        k = F.linear(x, self.memory_k_proj).unflatten(-1, (H, r))
        v = F.linear(x, self.memory_v_proj).unflatten(-1, (H, r))
        if self.cfg.normalize_qk:
            q = F.normalize(torch.tanh(q), dim=-1, eps=1e-6)
            k = F.normalize(torch.tanh(k), dim=-1, eps=1e-6)
        beta = torch.sigmoid(F.linear(x, self.beta_proj, self.beta_bias))
        beta = beta.unflatten(-1, (H, r)) if self.cfg.rankwise_gates else beta.unsqueeze(-1).expand_as(v)
        return q, k, v, beta

    def coefficients(self, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(keep κ, erase ε, write ω) from β for the configured update mode (spec section 4.2)."""
        lam = 1.0 - beta
        mode = self.cfg.state_update_mode
        if mode == "standard":
            return lam, beta, beta
        if mode == "lambda_outside":
            return lam, lam * beta, beta
        return torch.ones_like(beta), beta, beta  # no_lambda

    def delta_q(self, read: Tensor) -> Tensor | None:
        """read[B,T,R] -> δq[B,T,q_out] (fp32), or None without a q head."""
        return self.cfg.scaling * F.linear(read, self.delta_q_proj) if self.delta_q_proj is not None else None

    def delta_o(self, read: Tensor) -> Tensor | None:
        """read[B,T,R] -> δo[B,T,o_out] (fp32), or None without an o head."""
        return self.cfg.scaling * F.linear(read, self.delta_o_proj) if self.delta_o_proj is not None else None

    def task_q(self, x: Tensor) -> Tensor | None:
        """x[B,T,d] -> the task path's q correction [B,T,q_out] (fp32), or None without a task path."""
        return self._task(x, self.task_q_down, self.task_q_up)

    def task_o(self, a: Tensor) -> Tensor | None:
        """a[B,T,q_out] (o_proj's input) -> the task path's o correction [B,T,o_out] (fp32), or None."""
        return self._task(a, self.task_o_down, self.task_o_up)

    def _task(self, x: Tensor, down: Tensor | None, up: Tensor | None) -> Tensor | None:
        if down is None or up is None:
            return None
        return self.cfg.task_scaling * F.linear(F.linear(x.float(), down), up)

    # --- one forward call -------------------------------------------------------------------------------
    def step(self, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments, write: bool) -> LayerStep:
        """x[B,T,d], S[B,H,r,r], pend_sum[B,d] -> reads and new state for this call."""
        if self.cfg.write_granularity == "token":
            return self._step_token(x, S, pend_sum, seg, write)
        return self._step_message(x, S, pend_sum, seg, write)

    def _flat(self, t: Tensor) -> Tensor:  # [B,T,H,r] -> [B·H, T, r]
        return t.permute(0, 2, 1, 3).flatten(0, 1)

    def _step_token(self, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments, write: bool) -> LayerStep:
        B, T, _ = x.shape
        H, r = self.cfg.num_state_heads, self.cfg.rank
        q, k, v, beta = self.project(x)
        if not write:
            read = torch.einsum("bhij,bthj->bthi", S.float(), q).flatten(2) * seg.valid[..., None]
            return LayerStep(read, S, pend_sum, None)
        keep, erase, wr = self.coefficients(beta)
        written = self.selected(beta, seg.written)
        nowrite = (~written)[..., None, None]  # valid but unwritten tokens (system prompt, unselected) only read
        keep = keep.masked_fill(nowrite, 1.0)
        erase = erase.masked_fill(nowrite, 0.0)
        wr = wr.masked_fill(nowrite, 0.0)
        mask = seg.valid[:, None, :].expand(B, H, T).flatten(0, 1)
        reads, S_new = scan(self._flat(q), self._flat(k), self._flat(v), self._flat(keep), self._flat(erase),
                            self._flat(wr), S.flatten(0, 1).float(), mask)
        read = reads.unflatten(0, (B, H)).permute(0, 2, 1, 3).flatten(2)  # [B,T,R]
        w = seg.written[..., None, None].float()  # the regulariser and gate supervision see every candidate
        beta_mean = (beta * w).sum() / (w.sum() * H * r).clamp_min(1.0) if torch.is_grad_enabled() else None
        return LayerStep(read, S_new.unflatten(0, (B, H)), pend_sum, beta_mean, beta, seg.written)

    def selected(self, beta: Tensor, written: Tensor) -> Tensor:
        """written[B,T] restricted to tokens whose mean gate β̄ reaches `write_threshold` (a hard, per-layer choice;
        the gradient still reaches β of the tokens that are written)."""
        if self.cfg.write_threshold <= 0:
            return written
        return written & (beta.detach().mean(dim=(-2, -1)) >= self.cfg.write_threshold)

    def _step_message(self, x: Tensor, S: Tensor, pend_sum: Tensor, seg: Segments, write: bool) -> LayerStep:
        B, T, d = x.shape
        H, r = self.cfg.num_state_heads, self.cfg.rank
        q = self.project(x)[0]  # token queries [B,T,H,r]
        if not write or seg.n_closed_max == 0:
            read = torch.einsum("bhij,bthj->bthi", S.float(), q).flatten(2) * seg.valid[..., None]
            new_sum = pend_sum if not write else pend_sum + seg.sum_open(x)
            return LayerStep(read, S, new_sum, None)
        means, new_sum = seg.message_means(x, pend_sum)  # [B,M,d] closed messages, [B,d] open one
        _, k, v, beta = self.project(means)  # [B,M,H,r]
        keep, erase, wr = self.coefficients(beta)
        M = means.shape[1]
        mask = seg.closed_mask[:, None, :].expand(B, H, M).flatten(0, 1)
        states = scan_states(self._flat(k), self._flat(v), self._flat(keep), self._flat(erase), self._flat(wr),
                             S.flatten(0, 1).float(), mask)  # [B·H, M+1, r, r]
        states = states.unflatten(0, (B, H))  # [B,H,M+1,r,r]
        idx = seg.token_state_index  # [B,T] index into M+1: state before the token's message
        gathered = states.permute(0, 2, 1, 3, 4)[torch.arange(B, device=x.device)[:, None], idx]  # [B,T,H,r,r]
        read = torch.einsum("bthij,bthj->bthi", gathered, q).flatten(2) * seg.valid[..., None]
        cm = seg.closed_mask[..., None, None].float()
        beta_mean = (beta * cm).sum() / (cm.sum() * H * r).clamp_min(1.0) if torch.is_grad_enabled() else None
        return LayerStep(read, states[:, :, -1], new_sum, beta_mean, beta, seg.closed_mask)

