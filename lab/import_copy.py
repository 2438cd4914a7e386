"""Import a lab copy-head checkpoint (`lab.openset_copyhead` / `lab.openset_copyhistory` runs) into an adapter.

A run directory holds `ckpt.safetensors` (the head's parameters under `p.`: `p.wk.weight`, `p.wq.weight`,
`p.beta.weight`, `p.beta.bias`, `p.gate.weight`, `p.gate.bias`, `p.log_tau`, plus optimiser state that is
ignored) and `meta.json` (`rank`; with token keys `tok_rank` and the tensors `p.wt.weight`, `p.mix`). The product's
copy channel (deltamem_agents/core/copy.py) has the same parameters under `copy.`; the adapter's config gets
`copy_rank = rank` and `copy_tok_rank = tok_rank`. A read with a match-dependent gain (`--gain match`) is lab only.

- `import_copy_head(adapter_dir, run, out)`: a copy of the adapter directory with the copy channel added (the
  δ layers, their config and the backbone fingerprint unchanged).
- `import_copy_head(None, run, out, model=backbone)`: an adapter with only the copy channel. δ layers are not
  optional in an adapter, so it carries an inert one: one layer, rank 1, zero output projections (its corrections
  are exactly zero) and a write gate that never selects a token (its state stays zero). The backbone's hidden
  states are then exactly the frozen ones the lab head was trained on.

    python -m lab import-copy-head --adapter default --copy runs/copyhist/r64 --out runs/adapters/shipped+copy64

With `gate=` (`--gate runs/copygate/<name>/gate.pt`, a `lab.copy_gate.MessageGate` state dict: `net.0.weight`
[hidden, 3d], `net.0.bias`, `net.2.weight`, `net.2.bias`) the channel gets that message gate instead of the run's
linear one: config copy_gate="message", copy_gate_hidden from the weight, `net.*` → `copy.mgate.*`, the run's
`beta.*` dropped. Only a role-free gate (`lab.copy_gate --no-role`, input width 3d) fits the product.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.core.copy import copy_params
from deltamem_agents.patching.adapter_io import WEIGHTS_NAME, read_adapter_config, save_adapter

# the inert δ part of a copy-only adapter: one layer, rank 1, zero corrections, no token ever selected
INERT_DELTA = dict(rank=1, target_layers=(0,), output_init="zero", write_threshold=0.99, beta_bias_init=-30.0,
                   state_update_mode="no_lambda")


def read_copy_run(run: str | Path) -> tuple[int, int, dict[str, torch.Tensor]]:
    """(rank, tok_rank, the copy channel's tensors keyed as in the adapter file, `copy.<name>`) from a lab run
    directory."""
    from safetensors.torch import load_file

    run = Path(run)
    meta_file, ckpt = run / "meta.json", run / "ckpt.safetensors"
    if not meta_file.is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{run} is not a copy-head run directory (meta.json + ckpt.safetensors)")
    meta = json.loads(meta_file.read_text())
    rank, tok_rank = meta["rank"], meta.get("tok_rank", 0)
    if meta.get("gain", "position") == "match":
        raise ValueError(f"{run}: this read uses a match-dependent read gain, which the product's copy channel does "
                         "not have yet (lab only, research log §19)")
    if isinstance(tok_rank, bool) or not isinstance(tok_rank, int) or tok_rank < 0:
        raise ValueError(f"{run}: meta.json tok_rank must be a non-negative int, got {tok_rank!r}")
    raw = load_file(str(ckpt))
    tensors = {f"copy.{k[2:]}": v.float().contiguous() for k, v in raw.items() if k.startswith("p.")}
    want = {f"copy.{n}" for n in copy_params("token", tokens=bool(tok_rank))}
    if set(tensors) != want:
        raise ValueError(f"{ckpt}: copy-head keys differ: missing {sorted(want - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - want)}")
    tensors["copy.log_tau"] = tensors["copy.log_tau"].reshape(())
    if tok_rank:
        tensors["copy.mix"] = tensors["copy.mix"].reshape(())
        if tuple(tensors["copy.wt.weight"].shape[:1]) != (tok_rank,):
            raise ValueError(f"{run}: meta.json tok_rank {tok_rank} does not match W_t "
                             f"{tuple(tensors['copy.wt.weight'].shape)}")
    if not isinstance(rank, int) or tuple(tensors["copy.wk.weight"].shape[:1]) != (rank,):
        raise ValueError(f"{run}: meta.json rank {rank!r} does not match W_k {tuple(tensors['copy.wk.weight'].shape)}")
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{ckpt}: {k} is not finite")
    return rank, tok_rank, tensors


_GATE_KEYS = ("0.weight", "0.bias", "2.weight", "2.bias")


def read_gate(path: str | Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(gate_hidden, the message gate's tensors keyed as in the adapter file, `copy.mgate.<n>`) from a lab gate
    checkpoint (keys under `net.`, or `mgate.`, or bare `0.weight` …); shapes against the backbone in
    `_check_shapes`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such gate checkpoint (lab.copy_gate writes runs/copygate/<name>/gate.pt)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a state dict")
    for prefix in ("net.", "mgate.", ""):
        got = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix) and k[len(prefix):] in _GATE_KEYS}
        if len(got) == len(_GATE_KEYS):
            break
    else:
        raise ValueError(f"{path}: a message gate needs net.0.weight, net.0.bias, net.2.weight, net.2.bias; "
                         f"got {sorted(raw)}")
    tensors = {f"copy.mgate.{k}": v.float().contiguous() for k, v in got.items()}
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: {k} is not finite")
    w = tensors["copy.mgate.0.weight"]
    if w.dim() != 2:
        raise ValueError(f"{path}: net.0.weight must be 2-D, got shape {tuple(w.shape)}")
    return int(w.shape[0]), tensors


def _check_shapes(tensors: dict[str, torch.Tensor], rank: int, hidden: int) -> None:
    want = {"copy.wk.weight": (rank, hidden), "copy.wq.weight": (rank, hidden), "copy.gate.weight": (1, hidden),
            "copy.gate.bias": (1,), "copy.log_tau": ()}
    if "copy.wt.weight" in tensors:
        want |= {"copy.wt.weight": (tensors["copy.wt.weight"].shape[0], hidden), "copy.mix": ()}
    if "copy.mgate.0.weight" in tensors:
        gh, width = tensors["copy.mgate.0.weight"].shape
        if width == 3 * hidden + 3:
            raise ValueError(f"the message gate sees the message's role (input width 3·{hidden}+3 = {width}); the "
                             f"product's gate does not: train it with `python -m lab.copy_gate --no-role`")
        want |= {"copy.mgate.0.weight": (gh, 3 * hidden), "copy.mgate.0.bias": (gh,),
                 "copy.mgate.2.weight": (1, gh), "copy.mgate.2.bias": (1,)}
    else:
        want |= {"copy.beta.weight": (1, hidden), "copy.beta.bias": (1,)}
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise ValueError(f"copy tensor {k} has shape {tuple(tensors[k].shape)}; this backbone needs {shape} "
                             f"(hidden size {hidden})")


def import_copy_head(adapter: str | Path | None, run: str | Path, out: str | Path, *, model: Any = None,
                     note: str = "", gate: str | Path | None = None) -> Path:
    """Write `out`: the adapter at `adapter` (None: an adapter with only the copy channel, for `model`) plus the
    copy channel of the lab run `run` (with `gate`, a lab message-gate checkpoint, as its write gate). Refuses an
    adapter that already has a copy channel."""
    from safetensors.torch import load_file

    from lab.surgery import write_derived_adapter

    rank, tok_rank, copy_t = read_copy_run(run)
    how = {"from_run": str(run), "copy_rank": rank, "note": note}
    kind: dict[str, Any] = {"copy_tok_rank": tok_rank} if tok_rank else {}  # the config's token-key and gate fields
    if tok_rank:
        how["copy_tok_rank"] = tok_rank
    if gate is not None:
        gate_hidden, gate_t = read_gate(gate)
        copy_t = {k: v for k, v in copy_t.items() if not k.startswith("copy.beta.")} | gate_t
        assert set(copy_t) == {f"copy.{n}" for n in copy_params("message", tokens=bool(tok_rank))}
        gate_kind = {"copy_gate": "message", "copy_gate_hidden": gate_hidden}
        kind |= gate_kind
        how |= {"gate_from": str(gate), **gate_kind}
    if adapter is not None:
        meta = read_adapter_config(adapter)
        cfg: DeltaMemConfig = meta["config"]
        if cfg.copy_rank:
            raise ValueError(f"{adapter}: the adapter already has a copy channel (copy_rank={cfg.copy_rank})")
        _check_shapes(copy_t, rank, int(meta["fingerprint"]["hidden_size"]))
        tensors = load_file(str(Path(adapter) / WEIGHTS_NAME))
        how["from_adapter"] = str(adapter)
        return write_derived_adapter(out, {**tensors, **copy_t}, meta, cfg.replace(copy_rank=rank, **kind),
                                     "copy_channel", how)
    if model is None:
        raise ValueError("an adapter with only the copy channel needs the backbone (model=...) for its shapes")
    from deltamem_agents.patching import attach, detach

    _check_shapes(copy_t, rank, int(model.config.hidden_size))
    ad = attach(model, DeltaMemConfig(**INERT_DELTA, copy_rank=rank, **kind))
    try:
        ad.load_state_dict({**ad.state_dict(), **copy_t}, strict=True)
        return save_adapter(ad, out, info={"copy_channel": how | {"delta_layers": "inert (copy channel only)"}})
    finally:
        detach(model)
