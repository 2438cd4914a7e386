"""The per-call δ-mem context: how a state travels into the wrapped layers and back out, without living on them.

`forward_with_state` opens a `CallContext` in a ContextVar (so threads and asyncio tasks never share one),
runs the HF model, and the q_proj/o_proj wrappers of each wrapped layer read their slice of the carried
state from it and record their new state. Outside any context the wrappers are exact pass-throughs.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import Tensor

from ..core.segments import Segments
from ..core.state import DeltaState

_CURRENT: ContextVar["CallContext | None"] = ContextVar("deltamem_call", default=None)
_DISABLED: ContextVar[bool] = ContextVar("deltamem_disabled", default=False)


@dataclass
class CallContext:
    adapter: Any  # the DeltaMemAdapter this call belongs to
    state: DeltaState  # carried in (read only)
    seg: Segments
    write: bool
    reads: dict[int, Tensor] = field(default_factory=dict)  # slot -> read [B,T,R] (for the o_proj wrapper)
    S_out: dict[int, Tensor] = field(default_factory=dict)
    sum_out: dict[int, Tensor] = field(default_factory=dict)
    beta_means: dict[int, Tensor] = field(default_factory=dict)
    capture_inputs: bool = False
    detach_inputs: bool = False  # truncated gradient: the state path trains, the backbone stream does not
    inputs: dict[int, Tensor] = field(default_factory=dict)  # slot -> x (only when capture_inputs)
    gates: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # slot -> (β [B,U,H,r], mask [B,U])
    capture_gates: bool = False  # keep the written units' gates *with* their graph (gate supervision)
    fast: bool = False  # inference fast path (core/fastpath.py); `reads` then holds each layer's δo
    zero_slots: list[bool] | None = None  # per wrapped layer: the carried S is all zeros (known on the host)
    copy: Any = None  # the copy channel's part of this call (patching/copy_hooks.CopyCall), None without one
    # one token per row on the CPU with token writes: the compiled step (core/native.py), which reads each layer's
    # S by pointer and writes the new one into S_next (the next state's S, allocated once per call)
    native: bool = False
    native_rows: Tensor | None = None  # per row: valid, write candidate (native.row_flags)
    S_next: Tensor | None = None
    native_S: int = 0  # data pointers of state.S and S_next, and one layer's stride in bytes
    native_S_next: int = 0
    native_stride: int = 0


def current(adapter: Any) -> CallContext | None:
    """The active call for this adapter, or None (no call, another model's call, or δ-mem disabled)."""
    call = _CURRENT.get()
    if call is None or call.adapter is not adapter or _DISABLED.get():
        return None
    return call


@contextmanager
def activate(call: CallContext) -> Iterator[CallContext]:
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


@contextmanager
def disabled() -> Iterator[None]:
    """Run the backbone exactly as if δ-mem were not attached (state neither read nor written)."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)
