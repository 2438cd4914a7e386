"""Grow a saved adapter into more parallel state heads (TSW -> MSW), keeping what it computes.

`add_state_heads` copies an adapter with H state heads into one with H' > H heads (spec: MSW is H = 4 parallel
r×r states per layer). The existing heads keep their weights. Each new head gets fresh write/read projections
(the layer's own initialisation, seeded), write gates copied from head 0 and zero output columns in B_q / B_o.
Three things make the grown adapter compute exactly what the source did until it is trained further:
  - q̂ and k̂ are normalised per head, so new heads do not change the old heads' keys or queries;
  - the output columns of new heads are zero, so their reads add nothing to δq / δo (α / r uses r, not H·r);
  - selective writes threshold the gate mean over heads and ranks; copied gates leave that mean unchanged.
The new heads still read non-zero vectors, so their output columns receive gradients from the first step (no
zero saddle). An ablation tool: the rank-8 TSW adapter and its MSW continuation start from the same function.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..core.config import DeltaMemConfig
from .adapter_io import WEIGHTS_NAME, read_adapter_config, write_derived_adapter

_PROJ = ("memory_q_proj", "memory_k_proj", "memory_v_proj")
_OUT = ("delta_q_proj", "delta_o_proj")


def grow_heads_tensors(tensors: dict[str, torch.Tensor], cfg: DeltaMemConfig, heads: int, *,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of `cfg`'s adapter with `heads` state heads instead of `cfg.num_state_heads` (see module doc)."""
    H, r = cfg.num_state_heads, cfg.rank
    if heads <= H:
        raise ValueError(f"the adapter already has {H} state heads; asked for {heads}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _PROJ:  # [H·r, d]: append fresh rows, initialised like a new layer's (kaiming, a = √5)
            extra = torch.empty((heads - H) * r, t.shape[1])
            bound = 1.0 / math.sqrt(t.shape[1])  # kaiming_uniform_(a=√5) on a fan-in of d
            extra.uniform_(-bound, bound, generator=g)
            out[name] = torch.cat([t, extra.to(t.dtype)], 0)
        elif leaf in _OUT:  # [out, H·r]: new heads' columns zero
            out[name] = torch.cat([t, t.new_zeros(t.shape[0], (heads - H) * r)], 1)
        elif leaf in ("beta_proj", "beta_bias"):  # [G, ...] with G = H·r (rank-wise) or H: copy head 0's gates
            per = r if cfg.rankwise_gates else 1
            out[name] = torch.cat([t] + [t[:per]] * (heads - H), 0)
        else:
            out[name] = t
    return out


def add_state_heads(src: str | Path, dst: str | Path, heads: int, *, seed: int = 0, note: str = "") -> Path:
    """Write the adapter at `src` grown to `heads` state heads into directory `dst` (its info records how)."""
    from safetensors.torch import load_file

    meta = read_adapter_config(src)
    cfg: DeltaMemConfig = meta["config"]
    if cfg.write_granularity != "token":
        raise ValueError(f"{src}: parallel state heads need token writes (TSW -> MSW); "
                         f"this adapter writes per {cfg.write_granularity!r}")
    grown = grow_heads_tensors(load_file(str(Path(src) / WEIGHTS_NAME)), cfg, heads, seed=seed)
    how = {"from": str(src), "heads": [cfg.num_state_heads, heads], "seed": seed, "note": note}
    return write_derived_adapter(dst, grown, meta, cfg.replace(num_state_heads=heads), "grown_state_heads", how)


__all__ = ["add_state_heads", "grow_heads_tensors"]
