"""Device, weight dtype and attention implementation of a backbone: the policy, decided in one place.

    policy = resolve_policy()                      # what this machine should use
    policy = resolve_policy(device="cpu", dtype="bfloat16", attn_implementation="eager")   # user overrides

Defaults:
- CUDA (when available): bf16 weights; `attn_implementation="flash_attention_2"` when the `flash_attn`
  package imports, else `"sdpa"`.
- CPU: fp32 weights and `"sdpa"` attention, on every CPU, so a conversation gets the same replies on every machine
  and the shipped adapter runs in the precision it was trained and measured in. bf16 is opt-in (`dtype="bfloat16"`):
  on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm; `cpu_supports_bf16`) it
  prefilled the default backbone 2-3x faster and decoded at about the same speed (2-core AVX512-BF16 EPYC, one
  thread); bf16 logits of the default backbone differ from fp32 by up to ~0.5 nats, enough to flip close greedy
  choices. Without native bf16 the matmuls are emulated and much slower (2-core AVX2 EPYC: a training step of 8
  short episodes took 1.5-2.3 s in fp32 and 10-51 s in bf16).
- The δ-state and the δ-mem parameters stay fp32 whatever the weights (docs/design.md, section 2; `attach` casts
  the adapter to fp32 and the wrappers add the corrections in the backbone's dtype).

δ-mem itself does not depend on the attention implementation: it hooks q_proj/o_proj and takes padding from
the 2-D attention mask, never from the implementation-specific 4-D mask (tested: eager == sdpa).
`torch.backends.cpu.get_cpu_capability()` only names the vector ISA level ("AVX2", "AVX512"...), which says
nothing about bf16, so the CPU check reads the per-feature flags of `torch.cpu.get_capabilities()` and falls
back to that string only on torch builds without them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@dataclass(frozen=True)
class DevicePolicy:
    """Where and how to run a backbone. `state_dtype` is fixed: δ-states are always fp32."""

    device: str
    dtype: torch.dtype  # backbone weights
    attn_implementation: str
    state_dtype: torch.dtype = torch.float32

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keywords for `AutoModelForCausalLM.from_pretrained` (move the model to `device` afterwards)."""
        return {"dtype": self.dtype, "attn_implementation": self.attn_implementation}


# --- capability probes (module-level so tests can monkeypatch them) ---------------------------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


@lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """True when the `flash_attn` package imports (a broken CUDA build raises more than ImportError)."""
    try:
        importlib.import_module("flash_attn")
    except Exception:  # ImportError, or OSError/RuntimeError from a mismatched CUDA/torch build
        return False
    return True


def cpu_supports_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (so bf16 weights are not slower than fp32)."""
    get_caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_caps is not None:
        try:
            caps = get_caps()
            return any(bool(caps.get(flag, False)) for flag in _CPU_BF16_FLAGS)
        except Exception:  # pragma: no cover - a torch build whose cpuinfo probe fails
            pass
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return "BF16" in capability or "AMX" in capability


# --- the policy ------------------------------------------------------------------------------------------
def parse_dtype(dtype: Any) -> torch.dtype | None:
    """A torch.dtype from a dtype or its name ("bfloat16", "bf16", "fp32"...); None/"auto" -> None (policy)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[name]


def resolve_policy(device: Any = None, dtype: Any = None, attn_implementation: str | None = None) -> DevicePolicy:
    """The (device, weight dtype, attention implementation) to use; each argument left None is decided here."""
    dev = str(device) if device is not None else ("cuda" if cuda_available() else "cpu")
    on_cuda = torch.device(dev).type == "cuda"
    want = parse_dtype(dtype)
    if want is None:
        want = torch.bfloat16 if on_cuda else torch.float32
        if not on_cuda and cpu_supports_bf16():
            logger.info("this CPU has native bf16: dtype='bfloat16' prefills faster (replies may differ from fp32)")
    if attn_implementation is None:
        half = want in (torch.bfloat16, torch.float16)  # FlashAttention-2 runs in half precision only
        attn = "flash_attention_2" if on_cuda and half and flash_attn_available() else "sdpa"
    else:
        attn = str(attn_implementation)
        if attn not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"unknown attn_implementation {attn!r}; use one of {ATTN_IMPLEMENTATIONS}")
        if attn.startswith("flash_attention") and not on_cuda:
            raise ValueError(f"attn_implementation={attn!r} needs a CUDA device (device is {dev!r}); use 'sdpa'")
    policy = DevicePolicy(device=dev, dtype=want, attn_implementation=attn)
    logger.info("backbone policy: device=%s dtype=%s attn=%s (δ-state fp32)", dev, want, attn)
    return policy
