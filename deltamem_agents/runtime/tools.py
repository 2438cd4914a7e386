"""Tool definitions, the tool prompt, tool-choice normalization and tool-call parsing for chat.

The backbone's chat template (SmolLM2's ChatML) has no native tool support, so tools are described in
the system prompt (:func:`tools_system_text`) and assistant tool calls are written Hermes-style, exactly
as :func:`deltamem_agents.runtime.messages.template_text` renders them::

    <tool_call>
    {"name": "<fn>", "arguments": {...}}
    </tool_call>

:func:`parse_tool_calls` turns generated assistant text back into calls, and
:class:`~deltamem_agents.runtime.grammar.ToolCallConstraint` (re-exported here, imported lazily so this
module does not load xgrammar) constrains decoding to valid calls.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import InvalidMessageError

if TYPE_CHECKING:
    from .grammar import ToolCallConstraint

__all__ = [
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
    "normalize_tools",
    "normalize_tool_choice",
    "tools_system_text",
    "parse_tool_calls",
    "ToolCallConstraint",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}
_NAME_IN_RAW = re.compile(r'"name"\s*:\s*"([^"\\]{0,200})"')


def _tool_fields(tool: Any, i: int) -> tuple[Any, Any, Any]:
    """(name, description, parameters) of one tool in any accepted form."""
    if not isinstance(tool, dict):
        raise InvalidMessageError(f"tools[{i}] must be a dict, got {type(tool).__name__}")
    if isinstance(tool.get("function"), dict):
        fn = tool["function"]
        return fn.get("name"), fn.get("description", ""), fn.get("parameters")
    if "function" in tool or (tool.get("type") == "function" and "name" not in tool):
        raise InvalidMessageError(f"tools[{i}] has type 'function' but no 'function' dict")
    if tool.get("type", "function") not in ("function", "object"):
        raise InvalidMessageError(f"tools[{i}] has unsupported type {tool['type']!r}; only function tools are supported")
    if "name" in tool:
        return tool["name"], tool.get("description", ""), tool.get("parameters")
    if "title" in tool:  # a bare JSON schema of the arguments, named by its title
        schema = {k: v for k, v in tool.items() if k not in ("title", "description")}
        schema.setdefault("type", "object")
        return tool["title"], tool.get("description", ""), schema
    raise InvalidMessageError(f"tools[{i}] has no name (expected 'function', 'name' or a JSON schema 'title')")


def normalize_tools(tools: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Validate tools and return them as ``[{"name", "description", "parameters"}]``.

    Accepts OpenAI tools ``{"type": "function", "function": {...}}``, bare function dicts
    ``{"name", "description", "parameters"}`` and JSON schemas with a ``"title"`` (the title is the
    name). Raises :class:`InvalidMessageError` on a bad name, non-object parameters or duplicates.
    Idempotent: the output is accepted as input.
    """
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, dict)):
        raise InvalidMessageError("tools must be a list of tool definitions")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        name, desc, params = _tool_fields(tool, i)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidMessageError(
                f"tools[{i}] has invalid name {name!r}; names are 1-64 characters of A-Z a-z 0-9 _ -")
        if name in seen:
            raise InvalidMessageError(f"duplicate tool name {name!r}")
        seen.add(name)
        if desc is None:
            desc = ""
        if not isinstance(desc, str):
            raise InvalidMessageError(f"tool {name!r} description must be a string")
        if params is None:
            params = dict(_EMPTY_PARAMS)
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidMessageError(
                f"tool {name!r} parameters must be a JSON schema of type 'object', got {params!r:.200}")
        if "properties" in params and not isinstance(params["properties"], dict):
            raise InvalidMessageError(f"tool {name!r} parameters 'properties' must be a dict")
        try:
            params = json.loads(json.dumps(params, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(f"tool {name!r} parameters are not JSON-serializable: {exc}") from exc
        params.setdefault("type", "object")
        out.append({"name": name, "description": desc, "parameters": params})
    return out


def normalize_tool_choice(tool_choice: Any, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Return ``(mode, name)`` with mode in ``"auto" | "none" | "required" | "forced"``.

    ``tool_choice`` may be ``None``/``"auto"``, ``"none"``, ``"required"``/``"any"``, a tool name, or
    ``{"type": "function", "function": {"name": ...}}`` (``{"type": "function", "name": ...}`` too).
    ``tools`` must already be normalized. Raises :class:`InvalidMessageError` when the choice is
    malformed, names an unknown tool, or requires a tool while none is given.
    """
    names = [t["name"] for t in tools]
    name: Any = None
    if tool_choice is None or tool_choice == "auto":
        return ("auto", None) if tools else ("none", None)
    if tool_choice == "none":
        return "none", None
    if tool_choice in ("required", "any"):
        if not tools:
            raise InvalidMessageError(f"tool_choice={tool_choice!r} needs at least one tool")
        return "required", None
    if isinstance(tool_choice, str):
        name = tool_choice
    elif isinstance(tool_choice, dict) and tool_choice.get("type", "function") == "function":
        fn = tool_choice.get("function", tool_choice)
        name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise InvalidMessageError(
            f"invalid tool_choice {tool_choice!r:.200}; expected 'auto', 'none', 'required', a tool name "
            "or {'type': 'function', 'function': {'name': ...}}")
    if name not in names:
        raise InvalidMessageError(f"tool_choice names unknown tool {name!r}; tools: {names}")
    return "forced", name


def tools_system_text(tools: Iterable[Any]) -> str:
    """Text to append to the system prompt: the tool signatures and the exact call format."""
    norm = normalize_tools(tools)
    if not norm:
        return ""
    sigs = "\n".join(json.dumps({k: v for k, v in t.items() if v != ""}, ensure_ascii=False) for t in norm)
    return (
        "# Tools\n\n"
        "You may call one or more functions to help with the user's request. "
        "The functions are listed inside <tools></tools>:\n"
        f"<tools>\n{sigs}\n</tools>\n\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        "<tool_call></tool_call> tags, one block per call:\n"
        '<tool_call>\n{"name": "<function-name>", "arguments": {<arguments-json>}}\n</tool_call>\n'
        "The results come back in a tool message. If no function is needed, answer directly."
    )


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def _parse_payload(raw: str, tool_names: set[str] | None) -> tuple[str | None, dict[str, Any] | None, str]:
    """(name, arguments, error) of one block's payload; arguments is None when the call is invalid."""
    guess = _NAME_IN_RAW.search(raw)
    name: str | None = guess.group(1) if guess else None
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return name, None, f"invalid JSON: {str(exc)[:200]}"
    if not isinstance(obj, dict):
        return name, None, f"expected a JSON object with 'name' and 'arguments', got {type(obj).__name__}"
    fname = obj.get("name")
    if not isinstance(fname, str) or not NAME_RE.match(fname):
        return (fname if isinstance(fname, str) else None), None, f"missing or invalid function name {fname!r:.100}"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args, parse_constant=_reject_constant) if args.strip() else {}
        except (ValueError, RecursionError) as exc:
            return fname, None, f"arguments string is not valid JSON: {str(exc)[:200]}"
    if not isinstance(args, dict):
        return fname, None, f"arguments must be a JSON object, got {type(args).__name__}"
    extra = set(obj) - {"name", "arguments", "parameters"}
    if extra:
        return fname, None, f"unexpected keys in tool call: {sorted(extra)}"
    if tool_names is not None and fname not in tool_names:
        return fname, None, f"unknown tool {fname!r}"
    return fname, args, ""


def parse_tool_calls(
    text: str, tool_names: Iterable[str] | None = None
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Split generated assistant text into ``(content, calls, invalid_calls)``.

    ``content`` is the text before the first ``<tool_call>`` (trailing whitespace dropped when a call
    follows); ``calls`` are ``{"id": "call_<hex>", "name", "arguments": dict}``; ``invalid_calls`` are
    ``{"id", "name": str | None, "arguments": raw str, "error": str}`` (bad JSON, wrong shape, unknown
    tool when ``tool_names`` is given, unterminated block). Text between or after blocks is ignored.
    Never raises on any string; payloads are read with :mod:`json` only.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    names = set(tool_names) if tool_names is not None else None
    first = text.find(TOOL_CALL_OPEN)
    if first < 0:
        return text, [], []
    content = text[:first].rstrip()
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    pos = first
    while pos >= 0:
        start = pos + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, start)
        nxt = text.find(TOOL_CALL_OPEN, start)
        cid = f"call_{uuid.uuid4().hex}"
        if end < 0 or 0 <= nxt < end:  # no closing tag before the end / the next block
            stop = nxt if nxt >= 0 else len(text)
            raw = text[start:stop].strip()
            name, _, _ = _parse_payload(raw, None)
            invalid.append({"id": cid, "name": name, "arguments": raw, "error": "unterminated <tool_call> block"})
            pos = nxt
            continue
        raw = text[start:end].strip()
        name, args, err = _parse_payload(raw, names)
        if args is None:
            invalid.append({"id": cid, "name": name, "arguments": raw, "error": err})
        else:
            calls.append({"id": cid, "name": name, "arguments": args})
        pos = text.find(TOOL_CALL_OPEN, end + len(TOOL_CALL_CLOSE))
    return content, calls, invalid


def __getattr__(name: str) -> Any:
    """Lazy re-export of :class:`ToolCallConstraint` (keeps xgrammar out of plain imports)."""
    if name == "ToolCallConstraint":
        from .grammar import ToolCallConstraint

        return ToolCallConstraint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
