"""Per-call write structure shared by all layers: which tokens are valid, written, and in which message.

Built once per forward call from the padding mask, per-token message ids (-1 = not written, e.g. the system
prompt) and the carried open message (pend_id / pend_count of the δ-state). Message ids must be
non-decreasing along the sequence (a conversation is written in order).

Local message index j (per token): 0 = the message left open by the previous call (possibly empty),
1..n = messages started in this call. Messages 0..n-1 close in this call (they are written to S); message n
stays open. A token of message j reads the state after messages < j, i.e. `states[j]` of the message scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Segments:
    valid: Tensor  # [B,T] bool: not padding
    written: Tensor  # [B,T] bool: valid and message id >= 0
    token_state_index: Tensor | None = None  # [B,T] long: local message index j of each token
    closed_mask: Tensor | None = None  # [B,M] bool: closed message m is non-empty and really closes
    n_new: Tensor | None = None  # [B] long: messages started in this call
    counts: Tensor | None = None  # [B,M+1] fp32 token counts per local message (carried count included)
    pend_id_out: Tensor | None = None  # [B] long
    n_closed_max: int = 0

    @classmethod
    def build(cls, valid: Tensor, ids: Tensor | None, *, message_mode: bool, pend_id: Tensor | None = None,
              pend_count: Tensor | None = None, write_unlabelled: bool = True) -> Segments:
        """valid[B,T] bool, ids[B,T] long or None (None: every valid token is written, token mode only)."""
        valid = valid.bool()
        if ids is None:
            if message_mode:
                raise ValueError("message-mean writes (SSW) need per-token message ids; got none. The reference "
                                 "code silently falls back to token writes here; we refuse instead.")
            written = valid if write_unlabelled else torch.zeros_like(valid)
            return cls(valid=valid, written=written)
        if ids.shape != valid.shape:
            raise ValueError(f"message ids shape {tuple(ids.shape)} != token shape {tuple(valid.shape)}")
        ids = ids.long()
        written = valid & (ids >= 0)
        if not message_mode:
            return cls(valid=valid, written=written)
        B, T = ids.shape
        dev = ids.device
        pend_id = pend_id if pend_id is not None else torch.full((B,), -1, dtype=torch.long, device=dev)
        pend_count = pend_count if pend_count is not None else torch.zeros(B, device=dev)
        masked = torch.where(written, ids, torch.full_like(ids, -1))
        running = torch.cummax(torch.cat([pend_id[:, None], masked], dim=1), dim=1).values  # [B,T+1]
        if bool((written & (ids < running[:, :-1])).any()):
            raise ValueError("message ids must be non-decreasing along the conversation (and not below the "
                             "open message's id)")
        starts = written & (ids > running[:, :-1])
        j = torch.cumsum(starts.long(), dim=1)  # [B,T]
        n_new = j[:, -1] if T else torch.zeros(B, dtype=torch.long, device=dev)
        M = int(n_new.max()) if B and T else 0
        counts = torch.zeros(B, M + 1, device=dev)
        counts.scatter_add_(1, j, written.float())
        counts[:, 0] += pend_count
        ar = torch.arange(M, device=dev)
        closed = (ar[None, :] < n_new[:, None]) & (counts[:, :M] > 0)
        return cls(valid=valid, written=written, token_state_index=j, closed_mask=closed, n_new=n_new,
                   counts=counts, pend_id_out=running[:, -1], n_closed_max=M)

    # --- message sums (per layer, x differs) ---------------------------------------------------------
    def sum_open(self, x: Tensor) -> Tensor:
        """No message closes in this call: the written tokens' sum, [B,d] fp32."""
        return (x.float() * self.written[..., None]).sum(dim=1)

    def message_means(self, x: Tensor, pend_sum: Tensor) -> tuple[Tensor, Tensor]:
        """x[B,T,d] -> (means of closed messages [B,M,d], running sum of the open message [B,d])."""
        assert self.token_state_index is not None and self.counts is not None and self.n_new is not None
        B, T, d = x.shape
        M = self.n_closed_max
        sums = torch.zeros(B, M + 1, d, device=x.device, dtype=torch.float32)
        idx = self.token_state_index[..., None].expand(B, T, d)
        sums = sums.scatter_add(1, idx, x.float() * self.written[..., None])
        sums = torch.cat([sums[:, :1] + pend_sum[:, None].float(), sums[:, 1:]], dim=1)
        means = sums[:, :M] / self.counts[:, :M, None].clamp_min(1.0)
        open_sum = sums[torch.arange(B, device=x.device), self.n_new]
        return means, open_sum

    def pend_count_out(self, pend_count: Tensor) -> Tensor:
        if self.counts is None:  # token mode: nothing is ever pending
            return pend_count
        if self.n_closed_max == 0:
            return pend_count + self.written.float().sum(dim=1)
        return self.counts[torch.arange(self.counts.shape[0], device=self.counts.device), self.n_new]
