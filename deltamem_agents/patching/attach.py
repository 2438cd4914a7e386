"""attach / detach δ-mem on a Hugging Face causal LM (the backbone stays frozen and untouched).

`attach(model, config)` freezes every backbone parameter, builds one `DeltaMemLayer` per target layer
(held by a `DeltaMemAdapter` registered as `model.deltamem`), and swaps each target attention's q_proj /
o_proj for wrappers; with a copy channel (config.copy_rank > 0) it also hooks the final norm and wraps the LM
head (patching/copy_hooks.py). `detach(model)` puts the original modules back. The δ-state is never stored
here: it is passed to `forward_with_state` and returned from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.config import DeltaMemConfig
from ..core.copy import CopyChannel
from ..core.memory import DeltaMemLayer
from ..core.state import DeltaState
from ..errors import AlreadyAttachedError, NotAttachedError, UnsupportedArchitectureError
from . import copy_hooks
from .registry import arch_spec, decoder_layers, fingerprint
from .wrappers import DeltaOProj, DeltaQProj

ATTR = "deltamem"


class DeltaMemAdapter(nn.Module):
    """All trainable δ-mem parameters of one model, plus what they were built for."""

    def __init__(self, config: DeltaMemConfig, layer_ids: list[int], fp: dict[str, Any], hidden: int,
                 q_out: int, o_out: int) -> None:
        super().__init__()
        self.config = config
        self.layer_ids = tuple(layer_ids)
        self.fingerprint = dict(fp)
        self.hidden = hidden
        self.layers = nn.ModuleList(DeltaMemLayer(config, hidden, q_out, o_out) for _ in layer_ids)
        # the copy channel (core/copy.py), None without one; its parameters are saved under "copy."
        self.copy = CopyChannel(hidden, config.copy_rank, gate=config.copy_gate, gate_hidden=config.copy_gate_hidden,
                                tok_rank=config.copy_tok_rank) if config.copy_rank else None

    @property
    def copy_dims(self) -> tuple[int, int, bool] | None:
        """(d, key dimensions, token keys) of the copy channel's state, None without one."""
        return (self.hidden, self.copy.key_dims, bool(self.copy.tok_rank)) if self.copy is not None else None

    def state_bytes(self) -> int:
        """Bytes of one session's δ-state (fp32 tensors, the copy channel's included)."""
        return self.zero_state(1, "cpu").nbytes()

    @property
    def pending_dim(self) -> int:
        """Width of the open-message sum: the hidden size for message writes, 0 for token writes."""
        return self.hidden if self.config.write_granularity == "message_mean" else 0

    def zero_state(self, batch: int = 1, device: Any = None) -> DeltaState:
        device = device if device is not None else self.layers[0].beta_bias.device
        c = self.config
        return DeltaState.zeros(len(self.layer_ids), batch, c.num_state_heads, c.rank, self.pending_dim, device,
                                copy=self.copy_dims)

    def check_state(self, state: DeltaState, *, finite: bool = True) -> None:
        """Shapes always; NaN/Inf scan too unless `finite=False` (the per-call hot path skips it: states are
        checked when they are loaded or imported, and everything the runtime computes stays finite)."""
        c = self.config
        state.check_compatible(len(self.layer_ids), c.num_state_heads, c.rank, self.pending_dim, self.copy_dims)
        if finite:
            state.check_finite()

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def get_adapter(model: nn.Module) -> DeltaMemAdapter:
    adapter = getattr(model, ATTR, None)
    if not isinstance(adapter, DeltaMemAdapter):
        raise NotAttachedError("δ-mem is not attached to this model; call attach(model, config) first")
    return adapter


def is_attached(model: nn.Module) -> bool:
    return isinstance(getattr(model, ATTR, None), DeltaMemAdapter)


def attach(model: nn.Module, config: DeltaMemConfig | None = None) -> DeltaMemAdapter:
    """Wrap the target attention layers of `model` with freshly initialised δ-mem parameters."""
    config = config or DeltaMemConfig()
    if is_attached(model):
        raise AlreadyAttachedError("δ-mem is already attached to this model; detach(model) first")
    spec = arch_spec(model)
    layers = decoder_layers(model, spec)
    ids = list(config.target_layers) or list(range(len(layers)))
    if max(ids) >= len(layers):
        raise ValueError(f"target_layers {ids} out of range for a model with {len(layers)} layers")
    attns = [getattr(layers[i], spec.attn_name) for i in ids]
    q0, o0 = getattr(attns[0], spec.q_name), getattr(attns[0], spec.o_name)
    if not isinstance(q0, nn.Linear) or not isinstance(o0, nn.Linear):
        raise UnsupportedArchitectureError(f"{spec.q_name}/{spec.o_name} are not nn.Linear (already wrapped?)")
    if config.copy_rank:
        copy_hooks.check(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    ref = q0.weight
    adapter = DeltaMemAdapter(config, ids, fingerprint(model), q0.in_features, q0.out_features, o0.out_features)
    adapter.to(device=ref.device, dtype=torch.float32)
    for slot, attn in enumerate(attns):
        q, o = getattr(attn, spec.q_name), getattr(attn, spec.o_name)
        adapter.layers[slot].init_outputs(q.weight, o.weight)
        setattr(attn, spec.q_name, DeltaQProj(q, slot, adapter))
        setattr(attn, spec.o_name, DeltaOProj(o, slot, adapter))
    if adapter.copy is not None:
        copy_hooks.install(model, adapter, spec)
    setattr(model, ATTR, adapter)
    return adapter


def detach(model: nn.Module) -> DeltaMemAdapter:
    """Remove δ-mem, restoring the original projections; returns the removed adapter."""
    adapter = get_adapter(model)
    spec = arch_spec(model)
    layers = decoder_layers(model, spec)
    for i in adapter.layer_ids:
        attn = getattr(layers[i], spec.attn_name)
        for name in (spec.q_name, spec.o_name):
            mod = getattr(attn, name)
            if isinstance(mod, (DeltaQProj, DeltaOProj)):
                setattr(attn, name, mod.base)
    copy_hooks.remove(model, adapter, spec)
    delattr(model, ATTR)
    return adapter
