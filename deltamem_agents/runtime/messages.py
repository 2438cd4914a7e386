"""Chat messages: validation and the text form the backbone's chat template receives.

A message is a dict {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}. Assistant tool calls
({"tool_calls": [{"id", "type": "function", "function": {"name", "arguments": <json str or dict>}}]}) are
rendered Hermes-style as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` inside the content, and
tool results as the content of a "tool" message, so templates without native tool support (SmolLM2's
ChatML) still show them, and they are written into the δ-state like any other tokens.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidMessageError

ROLES = ("system", "user", "assistant", "tool")
MAX_CONTENT_CHARS = 2_000_000


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InvalidMessageError(f"{where} must be a string, got {type(text).__name__}")
    if len(text) > MAX_CONTENT_CHARS:
        raise InvalidMessageError(f"{where} is {len(text)} characters; the limit is {MAX_CONTENT_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessageError(f"{where} is not valid UTF-8 text (lone surrogate?): {exc}") from exc
    return text


def normalize_tool_call(call: Any, i: int = 0) -> dict[str, Any]:
    """Validate one OpenAI-style tool call; arguments become a JSON string of an object."""
    if not isinstance(call, dict):
        raise InvalidMessageError(f"tool_calls[{i}] must be a dict")
    fn = call.get("function", call)
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidMessageError(f"tool_calls[{i}] has no function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidMessageError(f"tool_calls[{i}] arguments are not valid JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise InvalidMessageError(f"tool_calls[{i}] arguments must be a JSON object")
    cid = call.get("id") or f"call_{i}"
    return {"id": str(cid), "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def validate_message(msg: Any) -> dict[str, Any]:
    """Return a clean copy of `msg` or raise InvalidMessageError saying what is wrong."""
    if not isinstance(msg, dict):
        raise InvalidMessageError(f"a message must be a dict with 'role' and 'content', got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidMessageError(f"unknown message role {role!r}; expected one of {ROLES}")
    out: dict[str, Any] = {"role": role, "content": _check_text(msg.get("content", ""), f"{role} message content")}
    calls = msg.get("tool_calls")
    if calls:
        if role != "assistant":
            raise InvalidMessageError("only assistant messages can carry tool_calls")
        out["tool_calls"] = [normalize_tool_call(c, i) for i, c in enumerate(calls)]
    elif not out["content"].strip() and role in ("user", "system"):
        raise InvalidMessageError(f"empty {role} message")
    for key in ("name", "tool_call_id"):
        if msg.get(key) is not None:
            out[key] = _check_text(msg[key], key)
    return out


def template_text(msg: dict[str, Any]) -> str:
    """The content string the chat template renders for a validated message."""
    text = msg["content"]
    for call in msg.get("tool_calls", ()):
        payload = {"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])}
        text += ("\n" if text else "") + "<tool_call>\n" + json.dumps(payload) + "\n</tool_call>"
    return text
