"""Wrapper modules that replace an attention's q_proj and o_proj: base output + δ-mem correction.

The q_proj wrapper sees the attention input x (the layer's normed hidden state), runs the layer's δ-mem step
(read + write, see core/memory.py) and adds δq before the head reshape / q-norm / RoPE. The o_proj wrapper
adds δo from the same call's read vector. Both hold the frozen base `nn.Linear` unchanged. With a task path
(config.task_rank > 0) each also adds its state-independent low-rank term, inside a δ-mem call only: outside
one, and under `disabled()`, the wrappers stay exact pass-throughs of the backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core import fastpath, native
from .context import CallContext, current


class _Wrapped(nn.Module):
    def __init__(self, base: nn.Linear, slot: int, adapter: Any) -> None:
        super().__init__()
        self.base = base
        self.slot = slot
        object.__setattr__(self, "_adapter", adapter)  # not registered: the adapter owns its parameters

    # Code that inspects the projection (dtype checks, shapes) still sees a Linear's attributes.
    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class DeltaQProj(_Wrapped):
    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        call = current(self._adapter)
        if call is None:
            return out
        layer = self._adapter.layers[self.slot]
        if call.fast:
            return self._fast(out, x, call, layer)
        xs = x.detach() if call.detach_inputs else x
        step = layer.step(xs, call.state.S[self.slot], call.state.pend_sum[self.slot], call.seg, call.write)
        read = step.read.detach() if call.detach_inputs else step.read
        call.reads[self.slot] = read
        call.S_out[self.slot] = step.S
        call.sum_out[self.slot] = step.pend_sum
        if step.beta_mean is not None:
            call.beta_means[self.slot] = step.beta_mean
        if call.capture_inputs:  # diagnostics: layer inputs and the gates of every written unit
            call.inputs[self.slot] = x
        if (call.capture_inputs or call.capture_gates) and step.gates is not None:
            g = step.gates if call.capture_gates else step.gates.detach()
            call.gates[self.slot] = (g, step.gate_mask)
        # the state read-out's correction, then the state-independent task path (config.task_rank)
        return _add(_add(out, layer.delta_q(read), False), layer.task_q(xs), call.detach_inputs)

    def _fast(self, out: Tensor, x: Tensor, call: CallContext, layer: Any) -> Tensor:
        """Inference only (see core/fastpath.py): same result as the reference branch above."""
        slot = self.slot
        zero = call.zero_slots is not None and call.zero_slots[slot]
        fw = fastpath.fused_weights(layer)
        if call.native and native.usable(x, out):  # one compiled call; the new S goes straight into call.S_next
            off = slot * call.native_stride
            call.reads[slot] = native.step_ptr(layer, fw, x, out, call.native_S + off, call.native_S_next + off,
                                               call.native_rows.data_ptr(), zero)
            call.S_out[slot] = None
            return _add(out, layer.task_q(x), False)
        st = fastpath.step(layer, x, call.state.S[slot], call.state.pend_sum[slot], call.seg, call.write, zero, fw)
        call.S_out[slot] = st.S
        call.sum_out[slot] = st.pend_sum
        if call.native:  # a layer of a compiled-step call that could not take it (e.g. a bf16 input)
            call.S_next[slot].copy_(st.S)
        if st.read is not None:  # None: the read is exactly zero, and so are both corrections
            dq, call.reads[slot] = fastpath.corrections(fw, st.read)
            out = _add(out, dq, False)
        return _add(out, layer.task_q(x), False)


class DeltaOProj(_Wrapped):
    def forward(self, a: Tensor) -> Tensor:
        out = self.base(a)
        call = current(self._adapter)
        if call is None:
            return out
        layer = self._adapter.layers[self.slot]
        if call.fast:  # the q wrapper left δo itself (or nothing: a zero read)
            out = _add(out, call.reads.pop(self.slot, None), False)
        else:
            out = _add(out, layer.delta_o(call.reads.pop(self.slot)), False)
        return _add(out, layer.task_o(a), call.detach_inputs)


def _add(out: Tensor, corr: Tensor | None, detach: bool) -> Tensor:
    """out + corr in out's dtype (None: out unchanged); `detach` for the trainer's truncated write pass."""
    if corr is None:
        return out
    if not torch.is_grad_enabled() and corr.dtype == out.dtype and out.shape == corr.shape:
        return out.add_(corr)  # the projection's fresh output, owned here: no new tensor
    return out + (corr.detach() if detach else corr).to(out.dtype)
