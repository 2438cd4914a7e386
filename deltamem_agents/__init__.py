"""deltamem-agents: δ-mem online memory for frozen local LLMs.

    from deltamem_agents import DeltaMemChat
    bot = DeltaMemChat.from_default()                     # offline SmolLM2-135M-Instruct + the shipped adapter
    bot.chat("My sister is called Daphne.", session_id="alice")

The public API, by layer:
  chat      DeltaMemChat, ChatResponse, ChatChunk          one δ-memory per session, tools, streaming, async
  runtime   SessionStore, SQLiteBackend, MemoryBackend, WindowPolicy, GenerationConfig
  patching  attach, detach, disabled, forward_with_state, load_adapter, save_adapter
  core      DeltaMemConfig, DeltaState, tsw, ssw, msw
  backbone  load_backbone, load_tokenizer
  errors    DeltaMemError and its subclasses

Importing the package is cheap: torch, transformers and the frameworks load only when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DeltaMemChat": "chat.model", "ChatResponse": "chat.model", "ChatChunk": "chat.model",
    "SessionStore": "runtime.store", "SQLiteBackend": "runtime.store", "MemoryBackend": "runtime.store",
    "PostgresBackend": "runtime.store_postgres", "open_store": "runtime.store_url",
    "WindowPolicy": "runtime.window", "GenerationConfig": "runtime.decode",
    "attach": "patching", "detach": "patching", "disabled": "patching", "forward_with_state": "patching",
    "load_adapter": "patching.adapter_io", "save_adapter": "patching.adapter_io",
    "DeltaMemConfig": "core.config", "DeltaState": "core.state", "tsw": "core.config", "ssw": "core.config",
    "msw": "core.config",
    "load_backbone": "backbone", "load_tokenizer": "backbone",
    "DeltaMemError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'deltamem_agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
