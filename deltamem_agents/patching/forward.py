"""One forward call of a δ-mem model with an explicit state in and out.

    out = forward_with_state(model, input_ids, state, message_ids=ids, **cache_kwargs(model, cache), write=True)
    out.outputs (the HF output), out.state (new DeltaState), out.beta_means (per wrapped layer)

`message_ids` [B,T] label each token with its chat message index (-1: not written, e.g. the system prompt);
token writes (TSW/MSW) write every labelled token, message writes (SSW) write each message's mean once it
closes. Without ids every valid token is written (token modes only). With a copy channel the same tokens are
written into its state too (except with `copy_write=False`: the runtime's generated tokens, so that a reply never
reads back its own tokens), and `out.copy` (a `patching.copy_hooks.CopyCall`) can add its read to logits computed
later (`skip_lm_head=True`: `out.copy.apply(logits)`); a copy channel with a message gate also groups the call's
positions by these ids (None: one message per row). `detach_inputs=True` is the
trainer's truncated-gradient write pass: the new state keeps its graph to the δ-mem parameters, but
neither the layer inputs nor the corrections carry gradients, so the backbone activations are not stored. Padding comes from the 2-D
`attention_mask` (never from the 4-D mask, whose convention changed across transformers versions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core import fastpath, native
from ..core.segments import Segments
from ..core.state import DeltaState
from . import copy_hooks
from .attach import get_adapter
from .context import _DISABLED, CallContext, activate


@dataclass
class StepOutput:
    outputs: Any
    state: DeltaState
    beta_means: dict[int, Tensor]
    inputs: dict[int, Tensor]
    gates: dict[int, tuple[Tensor, Tensor]] | None = None
    copy: copy_hooks.CopyCall | None = None  # the copy channel's part of the call (None without one)


def forward_with_state(model: nn.Module, input_ids: Tensor, state: DeltaState | None = None, *,
                       message_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                       write: bool = True, skip_lm_head: bool = False, capture_inputs: bool = False,
                       detach_inputs: bool = False, capture_gates: bool = False, copy_write: bool = True,
                       **kwargs: Any) -> StepOutput:
    adapter = get_adapter(model)
    B, T = input_ids.shape
    state = state if state is not None else adapter.zero_state(B, input_ids.device)
    adapter.check_state(state, finite=False)
    if adapter.copy is not None:  # a state from before the copy channel starts with an empty copy memory
        state = state.with_copy(*adapter.copy_dims)
    if state.batch != B:
        raise ValueError(f"state batch {state.batch} != input batch {B}")
    valid = attention_mask[:, -T:].bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    cfg = adapter.config
    message_mode = cfg.write_granularity == "message_mean"
    seg = Segments.build(valid, message_ids, message_mode=message_mode and write, pend_id=state.pend_id,
                         pend_count=state.pend_count)
    fast = fastpath.usable() and not (capture_inputs or detach_inputs or capture_gates)
    call = CallContext(adapter=adapter, state=state, seg=seg, write=write, capture_inputs=capture_inputs,
                       detach_inputs=detach_inputs, capture_gates=capture_gates, fast=fast,
                       zero_slots=zero_slots(state) if fast and T == 1 else None)
    if fast and T == 1 and not message_mode and native.state_usable(state.S) and native.available():
        call.native, call.S_next = True, torch.empty_like(state.S)
        call.native_rows = native.row_flags(seg.valid[:, 0], seg.written[:, 0] if write else None)
        call.native_S, call.native_S_next = state.S.data_ptr(), call.S_next.data_ptr()
        call.native_stride = state.S[0].numel() * state.S.element_size()
    if adapter.copy is not None:
        written = seg.written if copy_write else torch.zeros_like(seg.written)  # generated tokens: keys move, no writes
        call.copy = copy_hooks.new_call(adapter, model, input_ids, seg.valid, written, state.C, state.prev_h,
                                        write, None if skip_lm_head else kwargs.get("logits_to_keep", 0),
                                        detach_inputs, message_ids, state.prev_id)
    net = model.get_decoder() if skip_lm_head else model
    with activate(call):
        outputs = net(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    n = len(adapter.layer_ids)
    if _DISABLED.get():  # inside disabled(): plain backbone, state untouched
        return StepOutput(outputs, state, {}, {}, {})
    if len(call.S_out) != n:
        raise RuntimeError(f"only {len(call.S_out)}/{n} wrapped layers ran; is the model patched correctly?")
    cc = call.copy
    if cc is not None and cc.C_out is None:
        raise RuntimeError("the copy channel's final-norm hook did not run; is the model patched correctly?")
    if write:
        new = DeltaState(  # token writes with the compiled step: S_next is the new S, the pending sums unchanged
            S=call.S_next if call.native else torch.stack([call.S_out[i] for i in range(n)]),
            pend_sum=state.pend_sum if call.native else torch.stack([call.sum_out[i] for i in range(n)]),
            pend_count=seg.pend_count_out(state.pend_count) if message_mode else state.pend_count,
            pend_id=seg.pend_id_out if (message_mode and seg.pend_id_out is not None) else state.pend_id,
            C=cc.C_out if cc is not None else None,
            prev_h=cc.prev_h_out if cc is not None else None,
            prev_id=cc.prev_id_out if cc is not None else None,
        )
    else:
        new = state
    return StepOutput(outputs, new, call.beta_means, call.inputs, call.gates, cc)


def zero_slots(state: DeltaState) -> list[bool] | None:
    """Per wrapped layer, whether its S is all zeros in every batch row (host tensors only: no device sync)."""
    if state.S.device.type != "cpu":
        return None
    return (~state.S.flatten(1).any(dim=1)).tolist()
