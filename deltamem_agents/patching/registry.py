"""Registry of backbone architectures δ-mem can wrap, and the backbone fingerprint stored with adapters.

Each entry says where the decoder layers live and the names of the attention's query and output
projections. Every architecture listed keeps `q_proj`/`o_proj` as plain `nn.Linear`s inside `self_attn`, and
applies its per-head q norm and RoPE after `q_proj`, so δq lands before them as the spec asks (section 5.3). Each one
is tested on a tiny random config (tests/patching/test_architectures.py); one that is not tested is not listed.

- llama (SmolLM2), mistral: the plain layout.
- qwen2: q_proj has a bias; δq is added to the biased output.
- qwen3, smollm3: per-head q_norm/k_norm after q_proj; SmolLM3's NoPE layers simply skip RoPE.
- gemma3_text (Gemma3ForCausalLM, e.g. gemma-3-1b / 270m): q/k norms, alternating sliding-window and full
  layers, and a post-attention RMSNorm on o_proj's output. δo is added to o_proj's output, so that norm
  rescales it as it does the attention output; the sliding windows only change the backbone's own mask and
  KV cache, which δ-mem does not touch (the state sees every token).

Not registered:
- phi3: one fused `qkv_proj` instead of q/k/v projections. δq would have to go into the first
  n_heads·head_dim outputs of that Linear, and attach() sizes B_q and its `base_slice` init from a whole
  q_proj; supporting it needs a slice-aware wrapper and attach changes, not just a table entry.
- gemma3 (Gemma3ForConditionalGeneration, the multimodal checkpoints): its decoder sits under
  `model.language_model` and its config keeps the sizes in `text_config`; untested, so not listed. Load the
  text-only Gemma3ForCausalLM ("gemma3_text") instead.
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
    norm_path: str = "model.norm"  # the final norm: its output is the LM head's input (the copy channel's h)
    head_name: str = "lm_head"  # the LM head, on the *ForCausalLM itself


# model_type -> where to hook (all share the same layout)
REGISTRY: dict[str, ArchSpec] = {
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "qwen3": ArchSpec(),
    "smollm3": ArchSpec(),
    "gemma3_text": ArchSpec(),
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


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path` (an UnsupportedArchitectureError naming it if absent)."""
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UnsupportedArchitectureError(f"model has no {path!r} (is it a *ForCausalLM?)")
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
