"""Request bodies of the API (pydantic) and the conversion of OpenAI chat messages to the chat model's.

Unknown fields are accepted and ignored, as clients send many optional OpenAI fields (``logprobs``,
``presence_penalty``...); fields that would change the answer and are not supported (``n`` > 1) are refused.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .errors import APIError

__all__ = ["ChatCompletionRequest", "ForkRequest", "to_chat_messages"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. The δ-session is ``session_id`` (an extra field), else the
    ``X-Session-Id`` header, else ``user``; none of them: a stateless request."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]] = Field(min_length=1)
    model: Optional[str] = None
    session_id: Optional[str] = None
    user: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0)
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    n: Optional[int] = Field(default=None, ge=1)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def max_new_tokens(self, default: int, cap: int) -> int:
        n = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        n = default if n is None else n
        if n > cap:
            raise APIError(400, f"max_tokens is {n}; this server allows at most {cap}", param="max_tokens",
                           code="max_tokens_too_large")
        return n


class ForkRequest(BaseModel):
    """``POST /v1/sessions/{id}/fork``: the new session's id (a fresh one if omitted)."""

    model_config = ConfigDict(extra="forbid")
    to: Optional[str] = None


def _text(content: Any, where: str) -> str:
    """OpenAI message content (a string, null, or a list of text parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"{where}: content parts of type {kind!r} are not supported (text only)",
                               param="messages", code="unsupported_content")
        return "".join(out)
    raise APIError(400, f"{where}: content must be a string, null or a list of text parts", param="messages",
                   code="invalid_message")


def to_chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages -> the chat model's (``developer`` counts as ``system``; content flattened to text)."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _text(m.get("content"), f"messages[{i}]")}
        for key in ("tool_calls", "tool_call_id", "name"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out

