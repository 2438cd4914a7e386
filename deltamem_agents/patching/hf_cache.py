"""The KV-cache keyword of a transformers model's forward, across the 5.x releases we support.

transformers 5.23 takes and returns `past_key_values`; 5.24 renamed both to `cache` (the old name still works,
warns on every process, and is to be removed in 5.40). Callers ask here instead of naming either.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _cache_name(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)`, with the name this transformers release expects."""
    return {_cache_name(type(model)): cache}


def output_cache(outputs: Any) -> Any:
    """The KV cache a forward returned (`outputs.cache`, or `outputs.past_key_values` before 5.24)."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values
