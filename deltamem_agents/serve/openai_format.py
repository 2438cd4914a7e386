"""OpenAI response shapes: a whole chat completion, its streamed chunks, the model list."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

__all__ = ["completion_id", "completion", "chunk", "sse", "SSE_DONE", "tool_calls_of", "models"]

SSE_DONE = "data: [DONE]\n\n"


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The logged reply's tool calls in OpenAI form (arguments as a JSON string)."""
    return [{"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for c in message.get("tool_calls", ())]


def completion(cid: str, model: str, message: dict[str, Any], finish_reason: str,
               usage: dict[str, int]) -> dict[str, Any]:
    calls = tool_calls_of(message)
    content = message.get("content", "")
    msg: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None,
                           "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage, "system_fingerprint": None}


def chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` gives the usage-only chunk (no choices)."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": None,
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                                 "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def models(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, created)]}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "deltamem-agents"}
