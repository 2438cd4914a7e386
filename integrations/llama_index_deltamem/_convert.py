"""LlamaIndex `ChatMessage` <-> deltamem message dicts, and the "does this call continue the session" rule.

A deltamem message is ``{"role": "user"|"assistant"|"tool", "content": str, "tool_calls"?: [...],
"tool_call_id"?: str}`` (see `deltamem_agents.chat.validate_message`). System messages are not logged by the
runtime: all system messages of a call are joined into that call's system prompt.

Messages that :class:`~llama_index_deltamem.memory.DeltaMemMemory` hands out carry their session id in
``additional_kwargs["deltamem_session_id"]``, so a :class:`~llama_index_deltamem.llm.DeltaMemLLM` that
receives them answers in that session (one LLM can serve many memories / users).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ThinkingBlock, ToolCallBlock

from deltamem_agents.chat import message_key, validate_message

SESSION_KEY = "deltamem_session_id"

_ROLES = {
    MessageRole.SYSTEM.value: "system", MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant", MessageRole.CHATBOT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.TOOL.value: "tool", MessageRole.FUNCTION.value: "tool",
}


def runtime_role(message: ChatMessage) -> str:
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    try:
        return _ROLES[role]
    except KeyError:
        raise ValueError(f"unsupported LlamaIndex message role {role!r}") from None


def _text(message: ChatMessage) -> str:
    parts = [b.text for b in message.blocks if isinstance(b, TextBlock)]
    unsupported = [type(b).__name__ for b in message.blocks
                   if not isinstance(b, (TextBlock, ToolCallBlock, ThinkingBlock))
                   and type(b).__name__ != "CachePoint"]
    if unsupported:
        raise ValueError(f"DeltaMemLLM is text-only; cannot send content blocks {sorted(set(unsupported))}")
    return "\n".join(parts)


def tool_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict: a JSON object string is parsed, any other string becomes
    ``{"input": ...}``, and a value that is neither a string nor a dict becomes ``{}``."""
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {"input": raw}
        return parsed if isinstance(parsed, dict) else {"input": parsed}
    return raw if isinstance(raw, dict) else {}


def _openai_calls(calls: Iterable[Any]) -> list[dict[str, Any]]:
    """Tool calls stored OpenAI-style in ``additional_kwargs["tool_calls"]`` (dicts or SDK objects)."""
    out = []
    for i, c in enumerate(calls or ()):
        if not isinstance(c, dict):
            c = c.model_dump() if hasattr(c, "model_dump") else dict(vars(c))
        fn = c.get("function") or c
        out.append({"id": c.get("id") or f"call_{i}", "type": "function",
                    "function": {"name": fn.get("name"), "arguments": tool_arguments(fn.get("arguments", {}))}})
    return out


def to_runtime_message(message: ChatMessage) -> dict[str, Any]:
    """One non-system LlamaIndex message as a validated deltamem message dict."""
    role = runtime_role(message)
    out: dict[str, Any] = {"role": role, "content": _text(message)}
    if role == "assistant":
        calls = [{"id": b.tool_call_id or f"call_{i}", "type": "function",
                  "function": {"name": b.tool_name, "arguments": tool_arguments(b.tool_kwargs)}}
                 for i, b in enumerate(message.blocks) if isinstance(b, ToolCallBlock)]
        if not calls:
            calls = _openai_calls(message.additional_kwargs.get("tool_calls") or ())
        if calls:
            out["tool_calls"] = calls
    elif role == "tool":
        call_id = message.additional_kwargs.get("tool_call_id")
        if call_id is not None:
            out["tool_call_id"] = str(call_id)
    return validate_message(out)


def split_messages(messages: Sequence[ChatMessage]) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """(joined system prompt or None, non-system message dicts, the session id the messages are tagged with)."""
    systems: list[str] = []
    out: list[dict[str, Any]] = []
    tags: set[str] = set()
    for m in messages:
        tag = m.additional_kwargs.get(SESSION_KEY)
        if tag:
            tags.add(str(tag))
        if runtime_role(m) == "system":
            text = _text(m)
            if text.strip():
                systems.append(text.strip())
            continue
        out.append(to_runtime_message(m))
    if len(tags) > 1:
        raise ValueError(f"the messages come from several DeltaMemMemory sessions {sorted(tags)}; "
                         "one call answers in one session")
    return ("\n\n".join(systems) if systems else None), out, (tags.pop() if tags else None)


def to_chat_message(msg: dict[str, Any], session_id: str | None = None) -> ChatMessage:
    """A deltamem message dict as a LlamaIndex ChatMessage (tool calls as ToolCallBlocks)."""
    blocks: list[Any] = [TextBlock(text=msg["content"])] if msg.get("content") else []
    for c in msg.get("tool_calls", ()):
        fn = c["function"]
        args = fn["arguments"]
        blocks.append(ToolCallBlock(tool_call_id=c.get("id"), tool_name=fn["name"],
                                    tool_kwargs=json.loads(args) if isinstance(args, str) else dict(args)))
    kw: dict[str, Any] = {}
    if msg["role"] == "tool" and msg.get("tool_call_id"):
        kw["tool_call_id"] = msg["tool_call_id"]
    if session_id is not None:
        kw[SESSION_KEY] = session_id
    return ChatMessage(role=msg["role"], blocks=blocks, additional_kwargs=kw)


def tagged(message: ChatMessage, session_id: str) -> ChatMessage:
    """A deep copy of `message` tagged with `session_id` (the original is never mutated)."""
    m = message.model_copy(deep=True)
    m.additional_kwargs = {**m.additional_kwargs, SESSION_KEY: session_id}
    return m


def keys(msgs: Sequence[dict[str, Any]]) -> list[tuple]:
    return [message_key(m) for m in msgs]


def aligned_new(log: Sequence[dict[str, Any]], given: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages of `given` after the part that repeats the session log, or None if `given` does not
    continue the log (the first two cases of the chat model's history policy: the whole log resent, or its
    end)."""
    if not log:
        return list(given)
    L, G = keys(log), keys(given)
    if G[:len(L)] == L:
        return list(given[len(L):])
    for k in range(min(len(L), len(G)), 0, -1):
        if G[:k] == L[-k:]:
            return list(given[k:])
    return None


def continues_session(log: Sequence[dict[str, Any]], given: Sequence[dict[str, Any]], strict: bool = False) -> bool:
    """Whether a call with `given` messages is the session's next turn (written) or a side call (not written).

    Next turn: the messages repeat the end of the log (the visible window, the whole history, or nothing)
    and add new user/tool messages. Side call: they resend part of the history but do not line up with its
    end (a refine step, a retry, an early-stopping summary, a question rephrased over older history), or
    they add nothing to answer. Without `strict`, messages that share nothing with the log are taken as
    "only the new messages" (direct use: ``llm.chat([ChatMessage(...)], session_id=...)``); with `strict`
    (messages handed out by a DeltaMemMemory, which always resends its window) they must line up."""
    new = aligned_new(log, given)
    if new is not None:
        return bool(new) and new[-1]["role"] in ("user", "tool")
    if strict or (len(given) >= 2 and keys(given[:1])[0] in set(keys(log))):
        return False  # history resent out of line with the log
    return bool(given) and given[-1]["role"] in ("user", "tool")  # only new messages were sent


def same_kind(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two messages play the same part in a turn: same role and, for assistant messages, both or
    neither calling tools (contents may differ: frameworks strip or reformat what the model wrote)."""
    return a["role"] == b["role"] and (a["role"] != "assistant" or bool(a.get("tool_calls")) == bool(b.get("tool_calls")))
