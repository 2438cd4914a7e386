"""Adapter surgery for ablations: drop the task path, keep a band of layers, write a derived adapter.

Each derived adapter records in its info what was done to it and from which source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching.adapter_io import CONFIG_NAME, WEIGHTS_NAME, write_weights, read_adapter_config


def strip_task_path(src: str | Path, dst: str | Path, *, note: str = "") -> Path:
    """Copy the adapter at `src` to `dst` without its state-independent task path (config.task_rank -> 0, the
    task tensors dropped): the state path alone, exactly as the original with the task path zeroed. `note` is
    kept in the info (why it was stripped)."""
    from safetensors.torch import load_file

    from deltamem_agents.core.memory import TASK_PATH_PARAMS

    meta = read_adapter_config(src)
    cfg: DeltaMemConfig = meta["config"]
    if not cfg.task_rank:
        raise ValueError(f"{src}: the adapter has no task path to strip")
    tensors = load_file(str(Path(src) / WEIGHTS_NAME))
    kept = {k: v for k, v in tensors.items() if not k.endswith(TASK_PATH_PARAMS)}
    how = {"from": str(src), "task_rank": cfg.task_rank, "task_alpha": cfg.task_alpha, "note": note}
    return write_derived_adapter(dst, kept, meta, cfg.replace(task_rank=0), "stripped_task_path", how)


def write_derived_adapter(dst: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                          config: DeltaMemConfig, info_key: str, how: dict[str, Any]) -> Path:
    """Write an adapter made from another one (its `meta` as read by `read_adapter_config`) into directory `dst`:
    the new weights and config, the source's info plus `info[info_key] = how` (what was done to it)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    write_weights(tensors, dst / WEIGHTS_NAME)
    info = {**(meta.get("info") or {}), info_key: how}
    out = {**meta, "config": config.to_dict(), "info": info}
    (dst / CONFIG_NAME).write_text(json.dumps(out, indent=2, sort_keys=True))
    return dst


def keep_layers(src: str | Path, dst: str | Path, layers: tuple[int, ...] | list[int], *, note: str = "") -> Path:
    """Copy the adapter at `src` to `dst` with only the δ-mem layers whose backbone ids are in `layers` (a band):
    every other layer becomes the frozen backbone (no state, no read-out). The starting point of a band-trained
    arm; unlike zeroing B_q / B_o at inference (lab/scripts/layer_band.py) the dropped layers keep no state."""
    from safetensors.torch import load_file

    meta = read_adapter_config(src)
    ids, wanted = list(meta["layer_ids"]), set(layers)
    unknown = sorted(wanted - set(ids))
    if unknown or not wanted:
        raise ValueError(f"{src}: layers {unknown or '[]'} are not among the adapter's δ-mem layers {ids[0]}..{ids[-1]}")
    keep = [i for i, lid in enumerate(ids) if lid in wanted]
    tensors = load_file(str(Path(src) / WEIGHTS_NAME))
    kept = {}
    for new, old in enumerate(keep):
        prefix = f"layers.{old}."
        kept.update({f"layers.{new}.{k[len(prefix):]}": v for k, v in tensors.items() if k.startswith(prefix)})
    band = tuple(ids[i] for i in keep)
    how = {"from": str(src), "layers": list(band), "dropped": [lid for lid in ids if lid not in band], "note": note}
    meta = {**meta, "layer_ids": list(band)}
    return write_derived_adapter(dst, kept, meta, meta["config"].replace(target_layers=band), "kept_layers", how)
