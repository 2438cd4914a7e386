"""Registry of backbone architectures δ-mem can wrap, and the backbone fingerprint stored with adapters.

Each entry says where the decoder layers live and the names of the attention's query and output
projections. Every architecture listed keeps `q_proj`/`o_proj` as plain `nn.Linear`s inside `self_attn`, and
applies its per-head q norm (Qwen3/SmolLM3) and RoPE after `q_proj`, so δq lands before them as the spec asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    layers_path: str = "model.layers"
    attn_name: str = "self_attn"
    q_name: str = "q_proj"
    o_name: str = "o_proj"


# model_type -> where to hook. Llama (SmolLM2) is tested; the others share the layout and are registered
# so adapters can be trained for them, with the same tests run on tiny random configs.
REGISTRY: dict[str, ArchSpec] = {
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "qwen3": ArchSpec(),
    "smollm3": ArchSpec(),
}


def arch_spec(model: nn.Module) -> ArchSpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in REGISTRY:
        raise UnsupportedArchitectureError(
            f"δ-mem has no wrapper for model_type={model_type!r}; supported: {sorted(REGISTRY)}")
    return REGISTRY[model_type]


def decoder_layers(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    obj: Any = model
    for part in spec.layers_path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UnsupportedArchitectureError(f"model has no {spec.layers_path!r} (is it a *ForCausalLM?)")
    return obj


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What an adapter must match: architecture and the shapes the δ-mem parameters depend on."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": int(cfg.hidden_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)),
        "vocab_size": int(cfg.vocab_size),
    }
