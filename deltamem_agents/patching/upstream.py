"""Import an adapter of the reference implementation (declare-lab/delta-Mem) into our adapter format.

    import_upstream_adapter(src_dir, out_dir, model) -> Path   # then patching.adapter_io.load_adapter(model, out_dir)

The upstream directory holds `delta_mem_config.json` (its config dataclass, every field) and
`delta_mem_adapter.pt` (`torch.save` of a flat dict `"<module path>.<param>" -> tensor`, e.g.
`model.layers.0.self_attn.memory_q_proj`, bf16). The .pt file is read with `torch.load(weights_only=True)` only.
`model` is the backbone the adapter was trained for (any registered architecture; upstream itself ran
Qwen3 and SmolLM3): it gives the shapes and the fingerprint and is not modified.

Config mapping (spec section 10 → core/config.py): rank, alpha, beta_bias_init, normalize_qk, state_update_mode,
rankwise_gates, output_init, base_slice_ref_width, online_gain, num_state_heads, target_layers and
delta_heads map by name; memory_write_granularity → write_granularity ("token" or "message_mean");
write_system records what upstream writes (token mode writes every token, system prompt included; message
mode gives system messages id −1). Settings whose behaviour we do not implement are refused with an error
naming each of them (a separate retention gate, k/v corrections, memory partitions / global memory / latent or
synthetic readouts, trainable delta scale, the δo RMSNorm, sentence writes...). Fields that only configure
those archived paths are ignored; unknown fields are refused.

Tensor mapping, per wrapped layer i at slot s of our adapter: `…layers.i.self_attn.<p>` → `layers.s.<p>` for
p in memory_{q,k,v}_proj [R,d], beta_proj [G,d], beta_bias [G], delta_q_proj [q_out,R], delta_o_proj [o_out,R]
(same names, shapes, head-major R = H·r layout and scaling α/r). Upstream also saves the frozen, unused
delta_{k,v}_proj (and delta_q/o_proj of an inactive head): they never enter its forward and are dropped.
Message writes: upstream reads the state from before each forward call, ours reads causally per message
(core/memory.py); the two coincide when each call carries one message, as upstream's chat session does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import DeltaMemConfig
from ..errors import AdapterMismatchError, CorruptAdapterError
from .adapter_io import save_adapter
from .attach import DeltaMemAdapter
from .registry import arch_spec, decoder_layers, fingerprint

UPSTREAM_CONFIG = "delta_mem_config.json"
UPSTREAM_WEIGHTS = "delta_mem_adapter.pt"

# upstream field -> our DeltaMemConfig field
_MAPPED = {"rank": "rank", "alpha": "alpha", "beta_bias_init": "beta_bias_init", "normalize_qk": "normalize_qk",
           "state_update_mode": "state_update_mode", "rankwise_gates": "rankwise_gates", "output_init": "output_init",
           "base_slice_ref_width": "base_slice_ref_width", "online_gain": "online_gain",
           "num_state_heads": "num_state_heads", "memory_write_granularity": "write_granularity",
           "target_layers": "target_layers", "delta_heads": "delta_heads"}
# fields that change the forward: the only value we implement, and what another value would mean
_REQUIRED: dict[str, tuple[Any, str]] = {
    "couple_lambda": (True, "a separate retention gate λ"),
    "memory_readout_mode": ("delta", "a non-delta readout"),
    "memory_write_source": ("learned_hidden", "another write source"),
    "num_memory_partitions": (1, "memory partitions"),
    "num_global_memory_partitions": (0, "global memory partitions"),
    "memory_partition_routing": ("soft", "partition routing"),
    "memory_partition_basis": ("shared", "partition bases"),
    "tie_memory_partition_read_write": (False, "tied partition read/write"),
    "slot_read_top_k": (0, "top-k slot reads"),
    "global_memory_read_top_k": (0, "top-k global reads"),
    "memory_reader_layers": ((), "memory reader layers"),
    "latent_memory_layers": ((), "latent memory readouts"),
    "synthetic_memory_slots": (1, "synthetic KV slots"),
    "target_modules": (("self_attn",), "wrapping modules other than self_attn"),
    "delta_o_rmsnorm": (False, "an RMSNorm on δo"),
    "trainable_delta_scale": (False, "a trainable delta scale"),
}
# fields that only configure archived paths refused above (inert when those have their required value)
_INERT = {"memory_partition_read_mode", "memory_partition_sigmoid_gate_bias_init", "global_memory_mode",
          "global_memory_merge_mode", "global_memory_gate_bias_init", "global_memory_read_logit_bias",
          "memory_reader_hidden_size", "memory_reader_residual_scale", "memory_reader_read_only",
          "memory_write_proposals_per_message", "latent_memory_hidden_size", "latent_memory_residual_scale",
          "latent_memory_slots", "latent_memory_init_std", "latent_gate_init", "delta_o_rmsnorm_eps",
          "delta_scale_init", "delta_scale_max", "delta_scale_granularity", "delta_scale_parameterization"}
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.([A-Za-z_]+)$")
_KEPT = ("memory_q_proj", "memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias")
_HEADS = {"delta_q_proj": "q", "delta_k_proj": "k", "delta_v_proj": "v", "delta_o_proj": "o"}


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


def _heads(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(h for h in (str(i).strip().lower() for i in items) if h and h != "none"))


def map_upstream_config(upstream: dict[str, Any]) -> DeltaMemConfig:
    """Our DeltaMemConfig for an upstream config dict; raises AdapterMismatchError naming every setting we
    do not implement."""
    refused = sorted(k for k in upstream if k not in _MAPPED and k not in _REQUIRED and k not in _INERT)
    problems = [f"{k} (unknown upstream setting)" for k in refused]
    for key, (want, meaning) in _REQUIRED.items():
        if key in upstream and _norm(upstream[key]) != _norm(want):
            problems.append(f"{key}={upstream[key]!r} ({meaning})")
    heads = _heads(upstream.get("delta_heads", ("q", "k", "v", "o")))
    if not heads or set(heads) - {"q", "o"}:
        problems.append(f"delta_heads={list(heads)!r} (only q and o corrections are implemented; k/v would "
                        "enter the KV cache)")
    gran = _norm(upstream.get("memory_write_granularity", "token"))
    if gran not in ("token", "message_mean"):
        problems.append(f"memory_write_granularity={gran!r} (only token and message_mean writes are implemented)")
    if problems:
        raise AdapterMismatchError("upstream δ-mem adapter uses settings deltamem-agents does not implement: "
                                   + "; ".join(problems))
    kw: dict[str, Any] = {ours: upstream[theirs] for theirs, ours in _MAPPED.items() if theirs in upstream}
    kw["delta_heads"] = heads
    kw["write_granularity"] = gran
    kw["state_update_mode"] = _norm(kw.get("state_update_mode", "standard"))
    kw["output_init"] = _norm(kw.get("output_init", "zero"))  # upstream's dataclass default
    kw["target_layers"] = tuple(int(i) for i in kw.get("target_layers", ()))
    kw["write_system"] = gran == "token"
    try:
        return DeltaMemConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise AdapterMismatchError(f"upstream δ-mem config cannot be mapped: {exc}") from exc


def _read_upstream(src: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg_file, weights_file = src / UPSTREAM_CONFIG, src / UPSTREAM_WEIGHTS
    if not cfg_file.is_file() or not weights_file.is_file():
        raise CorruptAdapterError(f"{src} is not an upstream δ-mem adapter ({UPSTREAM_CONFIG} + {UPSTREAM_WEIGHTS})")
    try:
        upstream = json.loads(cfg_file.read_text())
        tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptAdapterError(f"{src}: unreadable upstream adapter: {exc}") from exc
    if not isinstance(upstream, dict) or not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CorruptAdapterError(f"{src}: expected a JSON object and a flat dict of named tensors")
    return upstream, tensors


def _by_layer(tensors: dict[str, torch.Tensor], heads: tuple[str, ...]) -> dict[int, dict[str, torch.Tensor]]:
    """{layer id: {our param name: tensor}} from upstream names; unused heads dropped, anything else refused."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.search(key)
        if m is None or (m.group(2) not in _KEPT and m.group(2) not in _HEADS):
            raise AdapterMismatchError(f"upstream adapter tensor {key!r} is not a parameter deltamem-agents "
                                       "implements")
        layer, name = int(m.group(1)), m.group(2)
        if name in _HEADS and _HEADS[name] not in heads:
            continue  # an inactive head: frozen, unused by the upstream forward
        out.setdefault(layer, {})[name] = t
    return out


def import_upstream_adapter(src_dir: str | Path, out_dir: str | Path, model: nn.Module, *,
                            info: dict[str, Any] | None = None) -> Path:
    """Convert the upstream adapter in `src_dir` for backbone `model` and write ours to `out_dir` (returned).
    Nothing is written if the adapter uses a setting we do not implement or does not fit `model`."""
    src = Path(src_dir)
    upstream, tensors = _read_upstream(src)
    config = map_upstream_config(upstream)
    per_layer = _by_layer(tensors, config.delta_heads)
    spec = arch_spec(model)
    layers = decoder_layers(model, spec)
    ids = sorted(per_layer)
    want = list(config.target_layers) or list(range(len(layers)))
    if ids != want:
        raise AdapterMismatchError(f"upstream adapter has tensors for layers {ids}, its config targets {want} "
                                   f"(the model has {len(layers)} layers)")
    attn = getattr(layers[ids[0]], spec.attn_name)
    q, o = getattr(attn, spec.q_name), getattr(attn, spec.o_name)
    config = config.replace(target_layers=tuple(ids) if ids != list(range(len(layers))) else ())
    adapter = DeltaMemAdapter(config, ids, fingerprint(model), q.in_features, q.out_features, o.out_features)
    expected = adapter.state_dict()
    ours: dict[str, torch.Tensor] = {}
    for slot, layer in enumerate(ids):
        for name, t in per_layer[layer].items():
            ours[f"layers.{slot}.{name}"] = t
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise AdapterMismatchError(f"upstream adapter lacks tensors: {missing[:5]}")
    for key, t in ours.items():
        if t.shape != expected[key].shape:
            raise AdapterMismatchError(f"upstream tensor for {key} has shape {tuple(t.shape)}, this backbone "
                                       f"needs {tuple(expected[key].shape)}: was it trained for another model?")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise CorruptAdapterError(f"upstream tensor for {key} is not a finite float tensor")
    adapter.load_state_dict({k: t.float() for k, t in ours.items()}, strict=True)
    note = {"imported_from": "declare-lab/delta-Mem", "source_dir": str(src.resolve()),
            "upstream_config": upstream}
    return save_adapter(adapter, out_dir, info={**note, **(info or {})})
