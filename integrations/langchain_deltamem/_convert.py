"""LangChain messages <-> deltamem message dicts (see `deltamem_agents.chat.validate_message`).

Rules (the LangChain contract, docs/ecosystem.md, section 1.1):
- `SystemMessage`s are not logged: all of them (joined by a blank line) become the session's system prompt;
- `HumanMessage` -> ``{"role": "user", "content", "name"?}``;
- `AIMessage` -> ``{"role": "assistant", "content", "tool_calls": [{"id", "type": "function",
  "function": {"name", "arguments": <json str>}}]}``;
- `ToolMessage` -> ``{"role": "tool", "content", "tool_call_id"}``;
- list content (standard or provider content blocks) is reduced to its text blocks, joined without a
  separator, so an `AIMessage` whose content was turned into v1 content blocks compares equal to the
  string reply logged in the session (which is what the "history resent" detection relies on).
  Non-text blocks (images, files, audio) are refused: the backbone is text-only.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

_TEXT_TYPES = ("text", "text-plain")
_SKIP_TYPES = ("tool_call", "tool_call_chunk", "tool_use", "function_call", "reasoning", "thinking",
               "server_tool_call", "server_tool_result", "invalid_tool_call", "non_standard")


def content_text(content: Any) -> str:
    """The text of a message's content (a string or a list of content blocks)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or ():
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, dict):
            raise ValueError(f"unsupported content block {block!r:.100}")
        kind = block.get("type")
        if kind in _TEXT_TYPES:
            parts.append(str(block.get("text", "")))
        elif kind in _SKIP_TYPES:
            continue
        else:
            raise ValueError(f"content blocks of type {kind!r} are not supported: the backbone reads text only")
    return "".join(parts)


def _tool_calls(msg: AIMessage) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(msg.tool_calls or ()):
        out.append({"id": call.get("id") or f"call_{i}", "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call.get("args") or {})}})
    return out


def to_deltamem(messages: Sequence[BaseMessage]) -> tuple[list[dict[str, Any]], str | None]:
    """(non-system message dicts, system prompt or None)."""
    systems: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage) or (isinstance(m, ChatMessage) and m.role == "system"):
            text = content_text(m.content)
            if text.strip():
                systems.append(text)
            continue
        if isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role == "user"):
            d: dict[str, Any] = {"role": "user", "content": content_text(m.content)}
            if m.name:
                d["name"] = m.name
        elif isinstance(m, AIMessage) or (isinstance(m, ChatMessage) and m.role == "assistant"):
            d = {"role": "assistant", "content": content_text(m.content)}
            if isinstance(m, AIMessage) and m.tool_calls:
                d["tool_calls"] = _tool_calls(m)
        elif isinstance(m, ToolMessage):
            d = {"role": "tool", "content": content_text(m.content), "tool_call_id": m.tool_call_id}
        elif isinstance(m, FunctionMessage):
            d = {"role": "tool", "content": content_text(m.content), "tool_call_id": m.name}
        elif isinstance(m, ChatMessage) and m.role == "tool":
            d = {"role": "tool", "content": content_text(m.content)}
        else:
            raise ValueError(f"unsupported message type {type(m).__name__}"
                             + (f" with role {m.role!r}" if isinstance(m, ChatMessage) else ""))
        out.append(d)
    return out, ("\n\n".join(systems) if systems else None)


def from_deltamem(msg: dict[str, Any]) -> BaseMessage:
    """A logged deltamem message dict as a LangChain message (for `thread_history`)."""
    role, content = msg["role"], msg.get("content", "")
    if role == "user":
        return HumanMessage(content=content, name=msg.get("name"))
    if role == "assistant":
        calls = [{"id": c["id"], "name": c["function"]["name"], "args": json.loads(c["function"]["arguments"]),
                  "type": "tool_call"} for c in msg.get("tool_calls", ())]
        return AIMessage(content=content, tool_calls=calls)
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=msg.get("tool_call_id") or "")
    return SystemMessage(content=content)
