"""Save and load δ-mem adapters: `adapter_config.json` + `adapter.safetensors` (adapter weights only).

The JSON holds a format version, the DeltaMemConfig, the wrapped layer ids, the backbone fingerprint and
free-form training info (the model card's numbers). Loading checks, before touching the model: the
fingerprint against the target backbone, exact key sets (no missing / unexpected), shapes, dtype and
finiteness. Nothing but JSON and safetensors is ever read (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import DeltaMemConfig
from ..errors import AdapterMismatchError, CorruptAdapterError
from .attach import DeltaMemAdapter, attach, detach, get_adapter, is_attached
from .registry import fingerprint

ADAPTER_FORMAT = "deltamem-adapter"
ADAPTER_FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"


def write_weights(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Serialise with safetensors and write through a sibling temp file + rename: the file gets the mode any
    file written here gets (the umask's), not safetensors' `save_file` private 0600, so an adapter copied into a
    package or shared directory stays readable; no process-wide umask is touched."""
    import os

    from safetensors.torch import save

    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(save(tensors, metadata={"format": ADAPTER_FORMAT}))
    os.replace(tmp, file)


def save_adapter(model_or_adapter: nn.Module, path: str | Path, *, info: dict[str, Any] | None = None) -> Path:
    """Write the adapter of an attached model (or a DeltaMemAdapter) into directory `path`."""
    adapter = model_or_adapter if isinstance(model_or_adapter, DeltaMemAdapter) else get_adapter(model_or_adapter)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}
    write_weights(tensors, path / WEIGHTS_NAME)
    meta = {"format": ADAPTER_FORMAT, "format_version": ADAPTER_FORMAT_VERSION,
            "config": adapter.config.to_dict(), "layer_ids": list(adapter.layer_ids),
            "fingerprint": adapter.fingerprint, "info": info or {}}
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CorruptAdapterError(f"{path} is not a δ-mem adapter directory ({CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}")
        if int(meta.get("format_version", 0)) > ADAPTER_FORMAT_VERSION:
            raise ValueError("written by a newer deltamem-agents")
        meta["config"] = DeltaMemConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptAdapterError(f"{cfg_file}: invalid adapter config: {exc}") from exc
    return meta


def load_adapter(model: nn.Module, path: str | Path) -> DeltaMemAdapter:
    """Attach δ-mem to `model` (if not attached yet) and load the adapter at `path` into it."""
    from safetensors.torch import load_file

    meta = read_adapter_config(path)
    want, have = meta.get("fingerprint", {}), fingerprint(model)
    diff = {k: (want.get(k), have[k]) for k in have if want.get(k) != have[k]}
    if diff:
        raise AdapterMismatchError(f"adapter at {path} was trained for another backbone: "
                                   + ", ".join(f"{k}: adapter {a!r} vs model {b!r}" for k, (a, b) in diff.items()))
    try:
        tensors = load_file(str(Path(path) / WEIGHTS_NAME))
    except Exception as exc:
        raise CorruptAdapterError(f"{path}/{WEIGHTS_NAME} is unreadable or truncated: {exc}") from exc
    config: DeltaMemConfig = meta["config"]
    fresh = not is_attached(model)
    if not fresh:
        adapter = get_adapter(model)
        if adapter.config != config or list(adapter.layer_ids) != list(meta["layer_ids"]):
            raise AdapterMismatchError("model already has δ-mem attached with a different config; detach it first")
    else:
        adapter = attach(model, config.replace(target_layers=tuple(meta["layer_ids"])))
    try:
        _check_and_load(adapter, tensors)
    except Exception:
        if fresh:  # leave the model exactly as it was
            detach(model)
        raise
    adapter.info = meta.get("info", {})  # type: ignore[attr-defined]
    return adapter


def _check_and_load(adapter: DeltaMemAdapter, tensors: dict[str, torch.Tensor]) -> None:
    expected = adapter.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterMismatchError(f"adapter keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            raise AdapterMismatchError(f"adapter tensor {k} has shape {tuple(t.shape)}, "
                                       f"model needs {tuple(expected[k].shape)}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise CorruptAdapterError(f"adapter tensor {k} is not a finite float tensor")
    adapter.load_state_dict(tensors, strict=True)
