"""Import a lab copy-head checkpoint (`lab.openset_copyhead` / `lab.openset_copyhistory` runs) into an adapter.

A run directory holds `ckpt.safetensors` (the head's parameters under `p.`: `p.wk.weight`, `p.wq.weight`,
`p.beta.weight`, `p.beta.bias`, `p.gate.weight`, `p.gate.bias`, `p.log_tau`, plus optimiser state that is
ignored) and `meta.json` (`rank`). The product's copy channel (deltamem_agents/core/copy.py) has the same
parameters under `copy.`; the adapter's config gets `copy_rank = rank`.

- `import_copy_head(adapter_dir, run, out)`: a copy of the adapter directory with the copy channel added (the
  δ layers, their config and the backbone fingerprint unchanged).
- `import_copy_head(None, run, out, model=backbone)`: an adapter with only the copy channel. δ layers are not
  optional in an adapter, so it carries an inert one: one layer, rank 1, zero output projections (its corrections
  are exactly zero) and a write gate that never selects a token (its state stays zero). The backbone's hidden
  states are then exactly the frozen ones the lab head was trained on.

    python -m lab import-copy-head --adapter default --copy runs/copyhist/r64 --out runs/adapters/shipped+copy64
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.copy import COPY_PARAMS
from deltamem_agents.patching.adapter_io import WEIGHTS_NAME, read_adapter_config, save_adapter

# the inert δ part of a copy-only adapter: one layer, rank 1, zero corrections, no token ever selected
INERT_DELTA = dict(rank=1, target_layers=(0,), output_init="zero", write_threshold=0.99, beta_bias_init=-30.0,
                   state_update_mode="no_lambda")


def read_copy_run(run: str | Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(rank, the copy channel's tensors keyed as in the adapter file, `copy.<name>`) from a lab run directory."""
    from safetensors.torch import load_file

    run = Path(run)
    meta_file, ckpt = run / "meta.json", run / "ckpt.safetensors"
    if not meta_file.is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{run} is not a copy-head run directory (meta.json + ckpt.safetensors)")
    rank = json.loads(meta_file.read_text())["rank"]
    raw = load_file(str(ckpt))
    tensors = {f"copy.{k[2:]}": v.float().contiguous() for k, v in raw.items() if k.startswith("p.")}
    want = {f"copy.{n}" for n in COPY_PARAMS}
    if set(tensors) != want:
        raise ValueError(f"{ckpt}: copy-head keys differ: missing {sorted(want - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - want)}")
    tensors["copy.log_tau"] = tensors["copy.log_tau"].reshape(())
    if not isinstance(rank, int) or tuple(tensors["copy.wk.weight"].shape[:1]) != (rank,):
        raise ValueError(f"{run}: meta.json rank {rank!r} does not match W_k {tuple(tensors['copy.wk.weight'].shape)}")
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{ckpt}: {k} is not finite")
    return rank, tensors


def _check_shapes(tensors: dict[str, torch.Tensor], rank: int, hidden: int) -> None:
    want = {"copy.wk.weight": (rank, hidden), "copy.wq.weight": (rank, hidden), "copy.beta.weight": (1, hidden),
            "copy.beta.bias": (1,), "copy.gate.weight": (1, hidden), "copy.gate.bias": (1,), "copy.log_tau": ()}
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise ValueError(f"copy tensor {k} has shape {tuple(tensors[k].shape)}; this backbone needs {shape} "
                             f"(hidden size {hidden})")


def import_copy_head(adapter: str | Path | None, run: str | Path, out: str | Path, *, model: Any = None,
                     note: str = "") -> Path:
    """Write `out`: the adapter at `adapter` (None: an adapter with only the copy channel, for `model`) plus the
    copy channel of the lab run `run`. Refuses an adapter that already has a copy channel."""
    from safetensors.torch import load_file

    from lab.surgery import write_derived_adapter

    rank, copy_t = read_copy_run(run)
    how = {"from_run": str(run), "copy_rank": rank, "note": note}
    if adapter is not None:
        meta = read_adapter_config(adapter)
        cfg: DeltaMemConfig = meta["config"]
        if cfg.copy_rank:
            raise ValueError(f"{adapter}: the adapter already has a copy channel (copy_rank={cfg.copy_rank})")
        _check_shapes(copy_t, rank, int(meta["fingerprint"]["hidden_size"]))
        tensors = load_file(str(Path(adapter) / WEIGHTS_NAME))
        how["from_adapter"] = str(adapter)
        return write_derived_adapter(out, {**tensors, **copy_t}, meta, cfg.replace(copy_rank=rank), "copy_channel",
                                     how)
    if model is None:
        raise ValueError("an adapter with only the copy channel needs the backbone (model=...) for its shapes")
    from deltamem_agents.patching import attach, detach

    _check_shapes(copy_t, rank, int(model.config.hidden_size))
    ad = attach(model, DeltaMemConfig(**INERT_DELTA, copy_rank=rank))
    try:
        ad.load_state_dict({**ad.state_dict(), **copy_t}, strict=True)
        return save_adapter(ad, out, info={"copy_channel": how | {"delta_layers": "inert (copy channel only)"}})
    finally:
        detach(model)
