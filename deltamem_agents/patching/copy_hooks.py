"""Where the copy channel (core/copy.py) meets the model: a hook on the final norm and a wrapper on the LM head.

Inside a δ-mem call (`forward_with_state`) of an adapter with a copy channel:
- the final norm's forward hook sees h [B, T, d] (the LM head's input) and runs the call's writes: the tokens the
  δ layers write (valid, message id ≥ 0, `write=True`), each keyed by the hidden state of the valid position
  before it ([prev_h, h_0 … h_{T-2}] with padding skipped) and gated by `CopyChannel.write_gates` (the message
  gate groups the call's positions by their message ids: a message split over calls is seen slice by slice);
  it records the new C and prev_h (the hidden state of each row's last valid position; both unchanged by a
  `write=False` call). With token keys each write key also carries the token before the written one ([prev_id,
  x_0 … x_{T-2}], padding skipped) and the call records prev_id, the last valid token;
- the LM head wrapper adds the read to the logits of the positions it receives (HF slices by `logits_to_keep`
  first): the read at p sees the writes of tokens ≤ p (with token keys its query also carries x_p). Only the last
  position (the decode case): C after the call's writes; other positions: per-position reads from the same scan.
Outside a call, under `disabled()`, or in a call of another model, the hook does nothing and the wrapper is the
LM head unchanged. A call with `skip_lm_head=True` (the trainer) keeps everything needed: `CopyCall.apply` adds
the read to logits computed later from the same hidden states.

The inference fast path (`core.fastpath.usable()`): for a tied LM head the base logits and the read are one
matmul (`core.copy.tied_logits`), and while C is exactly zero (a fresh session) nothing is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core import copy as cp
from ..core import fastpath
from ..errors import UnsupportedArchitectureError
from .context import current
from .registry import ArchSpec, module_at


@dataclass
class CopyCall:
    """The copy channel's part of one δ-mem call: inputs, then what the final-norm hook computed."""

    channel: cp.CopyChannel
    embedding: Tensor  # the input embedding matrix [V, d] (values and Ê's norms)
    ids: Tensor  # [B, T]
    valid: Tensor  # [B, T] bool
    written: Tensor  # [B, T] bool: valid, message id ≥ 0 and a writing call
    C_in: Tensor  # [B, d, r]
    prev_h_in: Tensor  # [B, d]
    write: bool
    keep: Any = 0  # the call's logits_to_keep (int: the last that many positions, 0 = all; or an index tensor);
    # None: no LM head in this call (skip_lm_head), per-position reads only if `apply` asks for them
    detach: bool = False  # the trainer's truncated write pass: keys from detached hidden states
    mids: Tensor | None = None  # [B, T] message ids (the message gate's grouping; None: one message per row)
    prev_id_in: Tensor | None = None  # [B] the last token before this call (token keys only; -1 = none)
    h: Tensor | None = None  # [B, T, d] fp32 final normed hidden states (set by the hook)
    C_out: Tensor | None = None
    prev_h_out: Tensor | None = None
    prev_id_out: Tensor | None = None
    _scan_in: tuple[Tensor, Tensor, Tensor] | None = None  # (k̂, v, β) of this call's writes
    _reads: Tensor | None = None  # [B, T, d] per-position reads, computed when needed

    # --- the final norm's hook ----------------------------------------------------------------------------
    def observe(self, h: Tensor) -> None:
        hf = h.detach().float() if self.detach else h.float()
        self.h, self._reads = hf, None
        if not self.write:
            self.C_out, self.prev_h_out, self._scan_in = self.C_in, self.prev_h_in, None
            self.prev_id_out = self.prev_id_in
            return
        self.prev_h_out = cp.last_valid(self.prev_h_in, hf, self.valid)
        if self.prev_id_in is not None:
            self.prev_id_out = cp.last_valid_id(self.prev_id_in, self.ids, self.valid)
        if self.written.device.type == "cpu" and not bool(self.written.any()):  # nothing to write (host check)
            self.C_out, self._scan_in = self.C_in, None
            return
        h_prev = cp.shifted_keys(self.prev_h_in, hf, self.valid)
        prev_ids = None if self.prev_id_in is None else cp.shifted_ids(self.prev_id_in, self.ids, self.valid)
        k = self.channel.key(h_prev, prev_ids, self.embedding)
        beta = self.channel.write_gates(h_prev, hf, self.mids, self.valid) * self.written
        v = cp.values(self.embedding, self.ids)
        self._scan_in = (k, v, beta)
        need_all = self.keep is not None and not (isinstance(self.keep, int) and self.keep == 1)
        self.C_out, self._reads = cp.scan(self.C_in, k, v, beta, self.query(slice(None)) if need_all else None)

    # --- reads ----------------------------------------------------------------------------------------------
    def query(self, pos: Tensor | slice) -> Tensor:
        """q̂ at positions `pos` [B, K, key_dims] (fp32), from their hidden states and, with token keys, their ids."""
        assert self.h is not None
        return self.channel.query(self.h[:, pos], self.ids[:, pos], self.embedding)

    def positions(self, K: int) -> Tensor | slice:
        """Which of the call's positions the K rows the LM head received are."""
        if isinstance(self.keep, Tensor):
            return self.keep
        T = self.ids.shape[1]
        if K > T:
            raise ValueError(f"the LM head received {K} positions of a {T}-token call")
        return slice(T - K, T)

    def reads(self, pos: Tensor | slice) -> Tensor:
        """o = C_p q̂_p at positions `pos` [B, K, d] (fp32), each after the writes of tokens ≤ p."""
        assert self.h is not None and self.C_out is not None
        if self.last_only(pos):
            return torch.einsum("bdr,bkr->bkd", self.C_out, self.query(pos))
        if self._reads is None:
            if self._scan_in is None:  # nothing written: every position reads the carried state
                return torch.einsum("bdr,bkr->bkd", self.C_in.float(), self.query(pos))
            k, v, beta = self._scan_in
            self._reads = cp.scan(self.C_in, k, v, beta, self.query(slice(None)))[1]
        return self._reads[:, pos]

    def last_only(self, pos: Tensor | slice) -> bool:
        """`pos` is just the call's last position (then C after the call is what it reads)."""
        T = self.ids.shape[1]
        return isinstance(pos, slice) and T > 0 and pos.start == T - 1 and pos.stop == T

    def state_is_zero(self) -> bool:
        """C after the call is exactly zero (a fresh session that wrote nothing yet); host tensors only."""
        C = self.C_out
        return C is not None and C.device.type == "cpu" and not bool(C.any())

    def apply(self, logits: Tensor, positions: Tensor | slice | None = None) -> Tensor:
        """`logits` [B, K, V] of positions `positions` (default: the call's last K) plus the copy read, for
        logits computed outside the call (`skip_lm_head=True`). Differentiable in the channel's parameters."""
        if self.h is None:
            raise RuntimeError("the final norm did not run in this call: no hidden states to read from")
        pos = self.positions(logits.shape[1]) if positions is None else positions
        col = self.channel.gain(self.h[:, pos]) * self.reads(pos)
        read = cp.read_generic(self.embedding, cp.embedding_norms(self.embedding), col)
        return logits + read.to(logits.dtype)


class CopyLMHead(nn.Module):
    """The LM head plus the copy read inside δ-mem calls; the base head unchanged otherwise."""

    def __init__(self, base: nn.Module, adapter: Any, embedding: nn.Module) -> None:
        super().__init__()
        self.base = base
        object.__setattr__(self, "_adapter", adapter)  # not registered: the adapter owns its parameters
        object.__setattr__(self, "_embedding", embedding)
        self.one_pass = True  # tied heads: base logits and read in one matmul (off: two, as for an untied head)

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base, "bias", None)

    @property
    def tied(self) -> bool:
        """The head's weight is the input embedding (same storage): one matmul serves both."""
        w, e = self.base.weight, self._embedding.weight
        return w is e or (w.data_ptr() == e.data_ptr() and w.shape == e.shape and w.dtype == e.dtype)

    def forward(self, x: Tensor) -> Tensor:
        call = current(self._adapter)
        cc: CopyCall | None = None if call is None else call.copy
        if cc is None or cc.h is None:
            return self.base(x)
        fast = fastpath.usable()
        pos = cc.positions(x.shape[1])
        if fast and (cc.last_only(pos) or cc._scan_in is None) and cc.state_is_zero():
            return self.base(x)  # the state read is exactly zero (a fresh session): the base logits
        col = cc.channel.gain(x) * cc.reads(pos)  # [B, K, d] fp32
        norms = cp.embedding_norms(self._embedding.weight)
        if fast and self.one_pass and self.tied:
            return cp.tied_logits(self.base.weight, self.bias, norms, x, col)
        out = self.base(x)
        return out + cp.read_generic(self._embedding.weight, norms, col).to(out.dtype)


def check(model: nn.Module, spec: ArchSpec) -> None:
    """Refuse, before anything is patched, a model whose final norm or LM head is not where `spec` says."""
    module_at(model, spec.norm_path)
    head = getattr(model, spec.head_name, None)
    if not isinstance(head, nn.Linear):
        raise UnsupportedArchitectureError(f"the copy channel needs `{spec.head_name}` to be an nn.Linear, got "
                                           f"{type(head).__name__}")


def install(model: nn.Module, adapter: Any, spec: ArchSpec) -> None:
    """Hook the final norm and wrap the LM head for `adapter.copy` (see the module docstring)."""
    check(model, spec)
    norm = module_at(model, spec.norm_path)
    head = getattr(model, spec.head_name)

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        call = current(adapter)
        if call is not None and call.copy is not None:
            call.copy.observe(out[0] if isinstance(out, tuple) else out)

    handle = norm.register_forward_hook(hook)
    object.__setattr__(adapter, "_copy_handle", handle)
    setattr(model, spec.head_name, CopyLMHead(head, adapter, model.get_input_embeddings()))


def remove(model: nn.Module, adapter: Any, spec: ArchSpec) -> None:
    """Undo `install`: the norm unhooked, the original LM head back."""
    handle = adapter.__dict__.pop("_copy_handle", None)
    if handle is not None:
        handle.remove()
    head = getattr(model, spec.head_name, None)
    if isinstance(head, CopyLMHead):
        setattr(model, spec.head_name, head.base)


def new_call(adapter: Any, model: nn.Module, ids: Tensor, valid: Tensor, written: Tensor, C: Tensor,
             prev_h: Tensor, write: bool, keep: Any, detach: bool, mids: Tensor | None = None,
             prev_id: Tensor | None = None) -> CopyCall:
    if adapter.copy.tok_rank and prev_id is None:
        raise ValueError("a copy channel with token keys needs the state's prev_id")
    return CopyCall(adapter.copy, model.get_input_embeddings().weight, ids, valid, written & write, C, prev_h,
                    write, keep, detach, mids=mids, prev_id_in=prev_id if adapter.copy.tok_rank else None)
