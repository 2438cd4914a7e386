"""The δ-state of one or more conversations: plain tensors passed into and out of every forward call.

Layout (Lw = number of wrapped layers, B = batch of conversations, H = state heads, r = rank, d = hidden):
  S          [Lw, B, H, r, r] fp32  committed delta-rule state per wrapped layer
  pend_sum   [Lw, B, d]       fp32  SSW only: running sum of the attention inputs of the message being written
  pend_count [B]              fp32  number of tokens in that open message (0 = none open)
  pend_id    [B]              int64 message id of the open message (-1 = none)
A message is committed to S (one delta step on its mean) when the next message starts, so the result never
depends on how tokens were split into forward calls. With token writes (TSW/MSW) the pending part stays empty.

Serialisation is safetensors bytes with JSON metadata (format version, fingerprint); `from_bytes` validates
shapes, dtypes and finiteness before anything is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidStateError

STATE_FORMAT = "deltamem-state"
STATE_FORMAT_VERSION = 1


@dataclass
class DeltaState:
    S: Tensor
    pend_sum: Tensor
    pend_count: Tensor
    pend_id: Tensor

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def zeros(
        cls, num_layers: int, batch: int, heads: int, rank: int, hidden: int, device: Any = "cpu"
    ) -> DeltaState:
        return cls(
            S=torch.zeros(num_layers, batch, heads, rank, rank, device=device),
            pend_sum=torch.zeros(num_layers, batch, hidden, device=device),
            pend_count=torch.zeros(batch, device=device),
            pend_id=torch.full((batch,), -1, dtype=torch.long, device=device),
        )

    @classmethod
    def stack(cls, states: list[DeltaState]) -> DeltaState:
        """Batch several conversations' states along B."""
        return cls(
            S=torch.cat([s.S for s in states], dim=1),
            pend_sum=torch.cat([s.pend_sum for s in states], dim=1),
            pend_count=torch.cat([s.pend_count for s in states]),
            pend_id=torch.cat([s.pend_id for s in states]),
        )

    def select(self, b: int) -> DeltaState:
        """The state of batch row b (kept as a batch of one)."""
        return DeltaState(self.S[:, b : b + 1], self.pend_sum[:, b : b + 1], self.pend_count[b : b + 1],
                          self.pend_id[b : b + 1])

    # --- shape helpers --------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.S.shape[0]

    @property
    def batch(self) -> int:
        return self.S.shape[1]

    @property
    def device(self) -> torch.device:
        return self.S.device

    def clone(self) -> DeltaState:
        return DeltaState(self.S.clone(), self.pend_sum.clone(), self.pend_count.clone(), self.pend_id.clone())

    def detach(self) -> DeltaState:
        return DeltaState(self.S.detach(), self.pend_sum.detach(), self.pend_count.detach(), self.pend_id)

    def to(self, device: Any) -> DeltaState:
        return DeltaState(self.S.to(device), self.pend_sum.to(device), self.pend_count.to(device),
                          self.pend_id.to(device))

    def rebased(self) -> DeltaState:
        """The same memory, with its open message closing at whatever message comes next (pend_id = -1).
        Used when a state moves to a conversation whose message numbering differs (shuffled-state controls,
        importing a memory into a fresh log)."""
        return DeltaState(self.S, self.pend_sum, self.pend_count, torch.full_like(self.pend_id, -1))

    def norms(self) -> Tensor:
        """Frobenius norm of S per wrapped layer, averaged over batch and heads: [Lw]."""
        return self.S.detach().flatten(3).norm(dim=-1).mean(dim=(1, 2))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.S, self.pend_sum, self.pend_count, self.pend_id))

    def equal(self, other: DeltaState, atol: float = 0.0) -> bool:
        pairs = zip((self.S, self.pend_sum, self.pend_count), (other.S, other.pend_sum, other.pend_count))
        return bool(torch.equal(self.pend_id, other.pend_id)) and all(
            a.shape == b.shape and bool((a - b).abs().max() <= atol) if a.numel() else a.shape == b.shape
            for a, b in pairs
        )

    def check_finite(self) -> None:
        for name in ("S", "pend_sum", "pend_count"):
            if not torch.isfinite(getattr(self, name)).all():
                raise InvalidStateError(f"δ-state tensor {name} holds NaN or Inf; refusing to use it")

    def check_compatible(self, num_layers: int, heads: int, rank: int, hidden: int) -> None:
        want = (num_layers, heads, rank, rank)
        got = (self.S.shape[0],) + tuple(self.S.shape[2:])
        if self.S.dim() != 5 or got != want:
            raise InvalidStateError(f"δ-state S has shape {tuple(self.S.shape)}; this model needs "
                                    f"[{num_layers}, B, {heads}, {rank}, {rank}]")
        if tuple(self.pend_sum.shape) != (num_layers, self.batch, hidden):
            raise InvalidStateError(f"δ-state pend_sum has shape {tuple(self.pend_sum.shape)}; "
                                    f"expected [{num_layers}, {self.batch}, {hidden}]")
        if self.pend_count.shape != (self.batch,) or self.pend_id.shape != (self.batch,):
            raise InvalidStateError("δ-state pend_count / pend_id must have shape [B]")

    # --- serialisation --------------------------------------------------------------------------------
    def to_bytes(self, metadata: dict[str, Any] | None = None) -> bytes:
        from safetensors.torch import save

        meta = {"format": STATE_FORMAT, "format_version": str(STATE_FORMAT_VERSION),
                "info": json.dumps(metadata or {}, sort_keys=True)}
        tensors = {"S": self.S, "pend_sum": self.pend_sum, "pend_count": self.pend_count, "pend_id": self.pend_id}
        return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes, *, expect: dict[str, Any] | None = None) -> tuple[DeltaState, dict]:
        """Parse and validate; `expect` keys (e.g. a fingerprint) must match the stored metadata info."""
        from safetensors.torch import load

        if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
            raise InvalidStateError("δ-state blob is empty or not bytes")
        try:
            tensors = load(bytes(data))
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            info = json.loads(meta.get("info", "{}"))
        except Exception as exc:  # safetensors raises several types on truncation / garbage
            raise InvalidStateError(f"δ-state blob is corrupt or truncated: {exc}") from exc
        if meta.get("format") != STATE_FORMAT:
            raise InvalidStateError(f"not a δ-state blob (format={meta.get('format')!r})")
        if int(meta.get("format_version", "0")) > STATE_FORMAT_VERSION:
            raise InvalidStateError("δ-state blob was written by a newer deltamem-agents")
        missing = {"S", "pend_sum", "pend_count", "pend_id"} - set(tensors)
        if missing:
            raise InvalidStateError(f"δ-state blob lacks tensors {sorted(missing)}")
        for k in ("S", "pend_sum", "pend_count"):
            if tensors[k].dtype != torch.float32:
                raise InvalidStateError(f"δ-state tensor {k} must be float32, got {tensors[k].dtype}")
        if tensors["pend_id"].dtype != torch.int64:
            raise InvalidStateError("δ-state tensor pend_id must be int64")
        for key, want in (expect or {}).items():
            if info.get(key) != want:
                raise InvalidStateError(f"δ-state was written for {key}={info.get(key)!r}, this model has {want!r}")
        state = cls(tensors["S"], tensors["pend_sum"], tensors["pend_count"], tensors["pend_id"])
        state.check_finite()
        return state, info
