"""The δ-state of one or more conversations: plain tensors passed into and out of every forward call.

Layout (Lw = number of wrapped layers, B = batch of conversations, H = state heads, r = rank, d = hidden):
  S          [Lw, B, H, r, r] fp32  committed delta-rule state per wrapped layer
  pend_sum   [Lw, B, d]       fp32  SSW only: running sum of the attention inputs of the message being written
  pend_count [B]              fp32  number of tokens in that open message (0 = none open)
  pend_id    [B]              int64 message id of the open message (-1 = none)
and, only when the adapter has a copy channel (core/copy.py; config.copy_rank = r > 0):
  C          [B, d, r]        fp32  the copy channel's delta-rule state (values: token embeddings)
  prev_h     [B, d]           fp32  final hidden state of the last valid position fed so far: the key source of
                                    the next call's first token (zeros at the start: nothing is written)
and, only when that copy channel has token keys (config.copy_tok_rank > 0):
  prev_id    [B]              int64 the last valid token fed so far (-1 = none): the token part of that key
A message is committed to S (one delta step on its mean) when the next message starts, so the result never
depends on how tokens were split into forward calls. With token writes (TSW/MSW) the pending part stays empty.

Serialisation is safetensors bytes with JSON metadata (format version, fingerprint); `from_bytes` validates
shapes, dtypes and finiteness before anything is used. Format version 2 adds the copy tensors, version 3 prev_id; a
state is written in the oldest version that holds its tensors, and older blobs load unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidStateError

STATE_FORMAT = "deltamem-state"
STATE_FORMAT_VERSION = 3  # 2: optional copy-channel tensors C, prev_h; 3: prev_id (token keys)
COPY_TENSORS = ("C", "prev_h")


@dataclass
class DeltaState:
    S: Tensor
    pend_sum: Tensor
    pend_count: Tensor
    pend_id: Tensor
    C: Tensor | None = None
    prev_h: Tensor | None = None
    prev_id: Tensor | None = None

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def zeros(
        cls, num_layers: int, batch: int, heads: int, rank: int, hidden: int, device: Any = "cpu",
        copy: tuple[int, ...] | None = None,
    ) -> DeltaState:
        """`copy` = (d, r) or (d, r, tokens) of the adapter's copy channel (`copy_dims`; None: no copy tensors)."""
        state = cls(
            S=torch.zeros(num_layers, batch, heads, rank, rank, device=device),
            pend_sum=torch.zeros(num_layers, batch, hidden, device=device),
            pend_count=torch.zeros(batch, device=device),
            pend_id=torch.full((batch,), -1, dtype=torch.long, device=device),
        )
        return state.with_copy(*copy) if copy is not None else state

    def with_copy(self, hidden: int, rank: int, tokens: bool = False) -> DeltaState:
        """This state with copy tensors (and prev_id with `tokens`): its own if it has them, else empty ones (a
        fresh copy memory)."""
        if self.C is not None and (self.prev_id is not None or not tokens):
            return self
        B, dev = self.batch, self.device
        if self.C is not None:  # a copy memory without token keys gains an unknown last token
            return DeltaState(self.S, self.pend_sum, self.pend_count, self.pend_id, self.C, self.prev_h,
                              torch.full((B,), -1, dtype=torch.long, device=dev))
        return DeltaState(self.S, self.pend_sum, self.pend_count, self.pend_id,
                          torch.zeros(B, hidden, rank, device=dev), torch.zeros(B, hidden, device=dev),
                          torch.full((B,), -1, dtype=torch.long, device=dev) if tokens else None)

    @classmethod
    def stack(cls, states: list[DeltaState]) -> DeltaState:
        """Batch several conversations' states along B (copy tensors: all or none carry them)."""
        with_copy = [s.C is not None for s in states]
        if any(with_copy) and not all(with_copy):
            raise InvalidStateError("cannot batch δ-states with and without copy-channel tensors")
        with_ids = [s.prev_id is not None for s in states]
        if any(with_ids) and not all(with_ids):
            raise InvalidStateError("cannot batch δ-states with and without the copy channel's prev_id")
        return cls(
            S=torch.cat([s.S for s in states], dim=1),
            pend_sum=torch.cat([s.pend_sum for s in states], dim=1),
            pend_count=torch.cat([s.pend_count for s in states]),
            pend_id=torch.cat([s.pend_id for s in states]),
            C=torch.cat([s.C for s in states]) if all(with_copy) else None,  # type: ignore[misc]
            prev_h=torch.cat([s.prev_h for s in states]) if all(with_copy) else None,  # type: ignore[misc]
            prev_id=torch.cat([s.prev_id for s in states]) if all(with_ids) else None,  # type: ignore[misc]
        )

    def select(self, b: int) -> DeltaState:
        """The state of batch row b (kept as a batch of one)."""
        return self.rows(slice(b, b + 1))

    def rows(self, idx: Any) -> DeltaState:
        """The states of batch rows `idx` (a slice or an index tensor)."""
        return DeltaState(self.S[:, idx], self.pend_sum[:, idx], self.pend_count[idx], self.pend_id[idx],
                          None if self.C is None else self.C[idx],
                          None if self.prev_h is None else self.prev_h[idx],
                          None if self.prev_id is None else self.prev_id[idx])

    def _map(self, fn: Any, ids: Any = None) -> DeltaState:
        """fn applied to every float tensor (`ids` to pend_id and prev_id, default unchanged)."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        id_fn = (lambda t: t) if ids is None else ids  # noqa: E731
        return DeltaState(fn(self.S), fn(self.pend_sum), fn(self.pend_count), id_fn(self.pend_id), opt(self.C),
                          opt(self.prev_h), None if self.prev_id is None else id_fn(self.prev_id))

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
        return self._map(Tensor.clone, Tensor.clone)

    def detach(self) -> DeltaState:
        return self._map(Tensor.detach)

    def to(self, device: Any) -> DeltaState:
        return self._map(lambda t: t.to(device), lambda t: t.to(device))

    def rebased(self) -> DeltaState:
        """The same memory, with its open message closing at whatever message comes next (pend_id = -1).
        Used when a state moves to a conversation whose message numbering differs (shuffled-state controls,
        importing a memory into a fresh log)."""
        return DeltaState(self.S, self.pend_sum, self.pend_count, torch.full_like(self.pend_id, -1), self.C,
                          self.prev_h, self.prev_id)

    def norms(self) -> Tensor:
        """Frobenius norm of S per wrapped layer, averaged over batch and heads: [Lw]."""
        return self.S.detach().flatten(3).norm(dim=-1).mean(dim=(1, 2))

    def _tensors(self) -> dict[str, Tensor]:
        t = {"S": self.S, "pend_sum": self.pend_sum, "pend_count": self.pend_count, "pend_id": self.pend_id}
        if self.C is not None and self.prev_h is not None:
            t.update(C=self.C, prev_h=self.prev_h)
            if self.prev_id is not None:
                t["prev_id"] = self.prev_id
        return t

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def copy_nbytes(self) -> int:
        """Bytes of the copy-channel tensors (0 without them): B·(d·r + d)·4 (+ B·8 with prev_id)."""
        return sum(t.numel() * t.element_size() for t in (self.C, self.prev_h, self.prev_id) if t is not None)

    def equal(self, other: DeltaState, atol: float = 0.0) -> bool:
        if (self.C is None) != (other.C is None) or (self.prev_id is None) != (other.prev_id is None):
            return False
        if self.prev_id is not None and not torch.equal(self.prev_id, other.prev_id):
            return False
        names = ("S", "pend_sum", "pend_count") + (COPY_TENSORS if self.C is not None else ())
        pairs = ((getattr(self, n), getattr(other, n)) for n in names)
        return bool(torch.equal(self.pend_id, other.pend_id)) and all(
            a.shape == b.shape and bool((a - b).abs().max() <= atol) if a.numel() else a.shape == b.shape
            for a, b in pairs
        )

    def check_finite(self) -> None:
        for name, t in self._tensors().items():
            if name not in ("pend_id", "prev_id") and not torch.isfinite(t).all():
                raise InvalidStateError(f"δ-state tensor {name} holds NaN or Inf; refusing to use it")

    def check_compatible(self, num_layers: int, heads: int, rank: int, hidden: int,
                         copy: tuple[int, ...] | None = None) -> None:
        """Shapes against the adapter; `copy` = (d, r) or (d, r, tokens) of its copy channel (`copy_dims`). A state
        without copy tensors fits an adapter with a copy channel (its copy memory starts empty), one without prev_id
        a channel with token keys (its last token is unknown); one with them needs that channel."""
        if self.C is not None or self.prev_h is not None:
            if copy is None:
                raise InvalidStateError("δ-state carries copy-channel tensors but this adapter has no copy channel")
            d, r = copy[:2]
            tokens = bool(copy[2]) if len(copy) > 2 else False
            if self.prev_id is not None and not tokens:
                raise InvalidStateError("δ-state carries prev_id but this adapter's copy channel has no token keys")
            if self.prev_id is not None and (self.prev_id.shape != (self.batch,) or self.prev_id.dtype != torch.long):
                raise InvalidStateError(f"δ-state prev_id must be int64 [{self.batch}], got "
                                        f"{self.prev_id.dtype} {tuple(self.prev_id.shape)}")
            if self.C is None or self.prev_h is None or tuple(self.C.shape) != (self.batch, d, r) \
                    or tuple(self.prev_h.shape) != (self.batch, d):
                raise InvalidStateError(
                    f"δ-state copy tensors have shapes C {None if self.C is None else tuple(self.C.shape)}, prev_h "
                    f"{None if self.prev_h is None else tuple(self.prev_h.shape)}; this adapter needs "
                    f"[{self.batch}, {d}, {r}] and [{self.batch}, {d}]")
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

        tensors = self._tensors()
        version = 3 if "prev_id" in tensors else 2 if "C" in tensors else 1  # the oldest format that holds them
        meta = {"format": STATE_FORMAT, "format_version": str(version),
                "info": json.dumps(metadata or {}, sort_keys=True)}
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
        present = set(tensors) & set(COPY_TENSORS)
        if present and present != set(COPY_TENSORS):
            raise InvalidStateError(f"δ-state blob has {sorted(present)} of the copy tensors {list(COPY_TENSORS)}")
        if "prev_id" in tensors and not present:
            raise InvalidStateError("δ-state blob has prev_id without the copy tensors C, prev_h")
        unknown = set(tensors) - {"S", "pend_sum", "pend_count", "pend_id", "prev_id", *COPY_TENSORS}
        if unknown:
            raise InvalidStateError(f"δ-state blob has unknown tensors {sorted(unknown)}")
        for k in ("S", "pend_sum", "pend_count", *sorted(present)):
            if tensors[k].dtype != torch.float32:
                raise InvalidStateError(f"δ-state tensor {k} must be float32, got {tensors[k].dtype}")
        for k in ("pend_id", "prev_id"):
            if k in tensors and tensors[k].dtype != torch.int64:
                raise InvalidStateError(f"δ-state tensor {k} must be int64")
        for key, want in (expect or {}).items():
            if info.get(key) != want:
                raise InvalidStateError(f"δ-state was written for {key}={info.get(key)!r}, this model has {want!r}")
        state = cls(tensors["S"], tensors["pend_sum"], tensors["pend_count"], tensors["pend_id"],
                    tensors.get("C"), tensors.get("prev_h"), tensors.get("prev_id"))
        if state.C is not None and (state.C.dim() != 3 or state.C.shape[0] != state.batch or state.prev_h.dim() != 2
                                    or tuple(state.prev_h.shape) != (state.batch, state.C.shape[1])):
            raise InvalidStateError("δ-state copy tensors C / prev_h have inconsistent shapes")
        if state.prev_id is not None and tuple(state.prev_id.shape) != (state.batch,):
            raise InvalidStateError(f"δ-state prev_id has shape {tuple(state.prev_id.shape)}, expected "
                                    f"[{state.batch}]")
        state.check_finite()
        return state, info
