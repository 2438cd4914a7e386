"""The chat model and the public API that framework integrations build on.

    from deltamem_agents.chat import DeltaMemChat
    bot = DeltaMemChat.from_default(db="sessions.db", budget=1024)
    bot.chat("My sister is called Daphne.", session_id="alice")

- `DeltaMemChat`, `ChatResponse`, `ChatChunk` (`chat.model`): one δ-memory per session, tools, streaming,
  async, read-only side calls;
- `load_model`, `model_lock`, `shared_chat`, `clear_shared_chats` (`chat.loading`): weights loaded once per
  process, one lock per loaded model, one shared chat model per configuration;
- `StreamHoldback`, `aiter_in_thread` (`chat.streaming`): stream-safe text deltas, the async bridge;
- message and tool helpers: `validate_session_id`, `validate_message`, `message_key`, `parse_tool_calls`,
  `tools_system_text`, `normalize_tools`, `TOOL_CALL_OPEN`.

Integrations import from here (never from `deltamem_agents.runtime`). Names load on first use, so importing
this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeltaMemChat": ".model", "ChatResponse": ".model", "ChatChunk": ".model",
    "load_model": ".loading", "model_lock": ".loading", "shared_chat": ".loading",
    "clear_shared_chats": ".loading", "resolve_adapter": ".loading", "DEFAULT_ADAPTER": ".loading",
    "StreamHoldback": ".streaming", "aiter_in_thread": ".streaming",
    "parse_tool_calls": ".tools", "tools_system_text": ".tools", "normalize_tools": ".tools",
    "normalize_tool_choice": ".tools", "TOOL_CALL_OPEN": ".tools", "ToolCallConstraint": ".tools",
    "validate_session_id": "..runtime.store_base", "validate_message": "..runtime.messages",
    "message_key": "..runtime.history",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
