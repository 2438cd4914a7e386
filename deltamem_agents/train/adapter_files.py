"""Locate saved δ-mem weights and configs: a bare safetensors file (benchmarks' `--save`), an adapter dir
(`adapter_config.json` + `adapter.safetensors`) or a trainer checkpoint dir (`checkpoint-last/adapter/`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..patching.adapter_io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config


def adapter_dir(path: str | Path) -> Path | None:
    """The adapter directory `path` is or holds (a checkpoint's `adapter/`), or None for a bare weights file."""
    p = Path(path)
    for d in (p, p / "adapter"):
        if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
            return d
    return None


def weights_file(path: str | Path) -> Path:
    """The safetensors file of `path` (a weights file, an adapter dir or a checkpoint dir)."""
    p = Path(path)
    if p.is_file():
        return p
    for d in (p, p / "adapter"):
        if (d / WEIGHTS_NAME).is_file():
            return d / WEIGHTS_NAME
    raise FileNotFoundError(f"{p} is neither a safetensors file nor an adapter or checkpoint directory")


def delta_from_adapter(path: str | Path, **overrides: Any) -> dict[str, Any]:
    """`TrainConfig.delta` (DeltaMemConfig keyword arguments) reproducing a saved adapter's config (its
    write_threshold, update mode, centring, layers...) with `overrides` applied: to fine-tune an adapter with
    `init_adapter` in its own config."""
    d = adapter_dir(path)
    if d is None:
        raise FileNotFoundError(f"{path} is not an adapter or checkpoint directory (no {CONFIG_NAME})")
    meta = read_adapter_config(d)
    out = meta["config"].replace(target_layers=tuple(meta["layer_ids"]), **overrides).to_dict()
    out.pop("format_version", None)
    return out
