"""Grow a saved adapter into more parallel state heads (TSW -> MSW) or a larger rank, keeping what it computes.

`add_state_heads` copies an adapter with H state heads into one with H' > H heads (spec: MSW is H = 4 parallel
r×r states per layer). The existing heads keep their weights. Each new head gets fresh write/read projections
(the layer's own initialisation, seeded), write gates copied from head 0 and zero output columns in B_q / B_o.
Three things make the grown adapter compute exactly what the source did until it is trained further:
  - q̂ and k̂ are normalised per head, so new heads do not change the old heads' keys or queries;
  - the output columns of new heads are zero, so their reads add nothing to δq / δo (α / r uses r, not H·r);
  - selective writes threshold the gate mean over heads and ranks; copied gates leave that mean unchanged.
The new heads still read non-zero vectors, so their output columns receive gradients from the first step (no
zero saddle). An ablation tool: the rank-8 TSW adapter and its MSW continuation start from the same function.

`grow_rank` turns rank r into r' = m·r (8 -> 16: a 16×16 state per head). Only *approximately* the same function:
  - q̂ and k̂ are normalised over the rank, so new rank rows that are exactly zero would keep the function but sit
    on a saddle (a zero q̂/k̂ coordinate gets no gradient: nothing reads or writes along it). The new rows are
    therefore the fresh initialisation scaled by `eps`; the old coordinates of q̂, k̂ shrink by a relative
    ≈ eps²·‖new‖² / (2‖old‖²) (≈ 1e-3 at eps = 0.05; measured in tests/patching/test_grow.py). Adam's
    scale-free steps move them off the small initialisation within tens of steps (the new q/k rows get gradients at
    once, the new v rows once the zero output columns below have moved, as in LoRA);
  - new output columns of B_q / B_o are zero and α grows with r (α' = α·r'/r), so the scaling α/r is unchanged;
  - rank-wise write gates are copied block-wise (m copies of the old r rows), so every token's mean gate, and so
    the selective-write decision, is exactly the source's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching.adapter_io import WEIGHTS_NAME, read_adapter_config
from lab.surgery import write_derived_adapter

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


def grow_rank_tensors(tensors: dict[str, torch.Tensor], cfg: DeltaMemConfig, rank: int, *, eps: float = 0.05,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of `cfg`'s adapter at rank `rank` (a multiple of `cfg.rank`) instead of `cfg.rank` (module doc)."""
    H, r = cfg.num_state_heads, cfg.rank
    if rank <= r or rank % r:
        raise ValueError(f"the new rank must be a multiple of the adapter's rank {r} and larger; got {rank}")
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _PROJ:  # [H·r, d] -> [H·r', d]: per head, the old rows then eps × a fresh initialisation
            d = t.shape[1]
            extra = torch.empty(H, rank - r, d).uniform_(-1.0 / math.sqrt(d), 1.0 / math.sqrt(d), generator=g)
            out[name] = torch.cat([t.view(H, r, d), (eps * extra).to(t.dtype)], 1).flatten(0, 1)
        elif leaf in _OUT:  # [out, H·r] -> [out, H·r']: new columns zero
            o = t.shape[0]
            out[name] = torch.cat([t.view(o, H, r), t.new_zeros(o, H, rank - r)], 2).flatten(1)
        elif leaf in ("beta_proj", "beta_bias") and cfg.rankwise_gates:  # [H·r, ...]: the old block, m times
            blk = t.view(H, r, *t.shape[1:])
            out[name] = torch.cat([blk] * (rank // r), 1).flatten(0, 1)
        else:
            out[name] = t
    return out


def grow_rank(src: str | Path, dst: str | Path, rank: int, *, eps: float = 0.05, seed: int = 0,
              note: str = "") -> Path:
    """Write the adapter at `src` grown to rank `rank` into directory `dst` (its info records how)."""
    from safetensors.torch import load_file

    meta = read_adapter_config(src)
    cfg: DeltaMemConfig = meta["config"]
    grown = grow_rank_tensors(load_file(str(Path(src) / WEIGHTS_NAME)), cfg, rank, eps=eps, seed=seed)
    how = {"from": str(src), "rank": [cfg.rank, rank], "alpha": [cfg.alpha, cfg.alpha * rank / cfg.rank],
           "eps": eps, "seed": seed, "note": note}
    new_cfg = cfg.replace(rank=rank, alpha=float(cfg.alpha) * rank / cfg.rank)
    return write_derived_adapter(dst, grown, meta, new_cfg, "grown_rank", how)


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


__all__ = ["add_state_heads", "grow_heads_tensors", "grow_rank", "grow_rank_tensors"]
