"""Resumable training checkpoints in safetensors + JSON (no pickle).

A checkpoint dir holds the adapter (`adapter/`, loadable by `load_adapter`), the AdamW moments as a
safetensors file keyed by parameter name, and `trainer_state.json` (step, total wall time, config, RNG seed
bookkeeping). Writes go to a temp dir renamed into place, so a kill mid-save leaves the previous one intact.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..patching.adapter_io import save_adapter
from ..patching.attach import DeltaMemAdapter

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"


def save_checkpoint(out_dir: Path, adapter: DeltaMemAdapter, opt: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], info: dict[str, Any]) -> Path:
    return save_training_state(out_dir, dict(adapter.named_parameters()), opt, trainer_state,
                               lambda d: save_adapter(adapter, d, info=info))


def save_training_state(out_dir: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
                        trainer_state: dict[str, Any], save_weights: Callable[[Path], Any]) -> Path:
    """Weights (written by `save_weights` into `adapter/`), AdamW moments and JSON state, swapped in atomically."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "checkpoint-last"
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=out_dir))
    save_weights(tmp / "adapter")
    names = {id(p): n for n, p in params.items()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"{names[id(p)]}::{key}"] = st[key].detach().cpu().contiguous()
            if "step" in st:
                tensors[f"{names[id(p)]}::step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    save_file(tensors, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
    old = out_dir / ".ckpt-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, adapter: DeltaMemAdapter, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore adapter weights and optimizer moments in place; returns the saved trainer state."""
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter" / "adapter.safetensors"))
    adapter.load_state_dict(weights, strict=True)
    return load_moments(ckpt, dict(adapter.named_parameters()), opt)


def load_moments(ckpt: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore AdamW moments by parameter name; returns the saved trainer state."""
    from safetensors.torch import load_file

    moments = load_file(str(ckpt / OPTIM_FILE))
    for key, t in moments.items():
        name, kind = key.split("::")
        p = params[name]
        st = opt.state.setdefault(p, {})
        st[kind] = t.reshape(()).clone() if kind == "step" else t.to(p.device).clone()
    return json.loads((ckpt / STATE_FILE).read_text())
