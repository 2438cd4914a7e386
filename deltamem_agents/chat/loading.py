"""Load a backbone + δ-mem adapter once per process and share it between chat models and integrations.

Key: (model dir, adapter dir, dtype, device). LangChain's standard tests build a model instance per test (and
10 in `test_init_time`), so weights must load once. The shipped adapter for the default backbone lives in
`deltamem_agents/adapters/smollm2-135m-instruct/`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

DEFAULT_ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "smollm2-135m-instruct"
logger = logging.getLogger(__name__)
_CACHE: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def resolve_adapter(adapter: str | Path | None, model: str | Path | None) -> Path | None:
    """"default" -> the shipped adapter (default backbone only); None/"none" -> no δ-mem."""
    if adapter is None or str(adapter) == "none":
        return None
    if str(adapter) == "default":
        if model not in (None, "default"):
            raise ValueError("the shipped adapter is for the default backbone; pass adapter=<dir> for another model")
        if (DEFAULT_ADAPTER / "adapter_config.json").is_file():
            return DEFAULT_ADAPTER
        logger.warning("no trained δ-mem adapter is shipped for the default backbone yet: running the plain "
                       "backbone (pass adapter=<dir> to use one you trained)")
        return None
    return Path(adapter)


def load_model(model: str | Path | None = None, adapter: str | Path | None = "default", *, dtype: Any = None,
               device: str | None = None) -> tuple[Any, Any]:
    """(model with δ-mem attached when an adapter is given, tokenizer); cached per process."""
    import torch

    from ..backbone import load_backbone, resolve_model_dir
    from ..patching.adapter_io import load_adapter

    mdir = resolve_model_dir(model)
    adir = resolve_adapter(adapter, model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or torch.float32
    key = (str(mdir), str(adir), str(dtype), device)
    with _LOCK:
        if key not in _CACHE:
            net, tok = load_backbone(mdir, dtype=dtype, device=device)
            if adir is not None:
                load_adapter(net, adir)
            _CACHE[key] = (net, tok)
        return _CACHE[key]
