"""Which of the messages a caller sends are new for a session (the δ-memory is append-only).

Callers either send the whole history every call (LangGraph style) or only the new messages. Policy
(`mode="auto"`), checked in this order:
  1. the session's log is a prefix of the given list          -> the rest is new (full history resent);
  2. the given list starts with the log's last k messages      -> the rest is new (history trimmed in front);
  3. the log's last message occurs in the given list           -> what follows its last occurrence is new
     (earlier messages were edited: a written memory cannot be un-written, so edits are ignored);
  4. otherwise                                                  -> everything given is new (only new messages sent).
`mode="new"` treats everything as new; `mode="full"` requires case 1 and raises otherwise.
Messages compare by role, content, tool calls (name + parsed arguments) and tool_call_id.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidMessageError


def message_key(m: dict[str, Any]) -> tuple:
    """What two messages must share to count as the same message (role, content, tool calls, tool call id)."""
    calls = tuple((c["function"]["name"], json.dumps(json.loads(c["function"]["arguments"]), sort_keys=True))
                  for c in m.get("tool_calls", ()))
    return (m["role"], m.get("content", ""), calls, m.get("tool_call_id"))


def new_messages(log: list[dict[str, Any]], given: list[dict[str, Any]], mode: str = "auto") -> list[dict[str, Any]]:
    """The new part of `given` (policy above). Costs O(len(given)) message keys, not O(len(log)): cases 2
    and 3 only look at the log's last n = min(len(log), len(given)) messages, and case 1 needs the whole log
    only when `given` is at least as long (a shorter list cannot start with it)."""
    if mode == "new" or not log:
        return list(given)
    G = [message_key(m) for m in given]
    n = min(len(log), len(G))
    tail = [message_key(x) for x in log[len(log) - n:]]  # the log's last n keys (all of them if G is longer)
    if len(G) >= len(log) and G[:len(log)] == tail:
        return list(given[len(log):])
    if mode == "full":
        raise InvalidMessageError("mode='full' but the given messages do not start with the session's history")
    if mode != "auto":
        raise ValueError(f"unknown history mode {mode!r}")
    for k in range(n, 0, -1):
        if G[:k] == tail[n - k:]:
            return list(given[k:])
    last_key = tail[-1] if tail else message_key(log[-1])
    last = [i for i, g in enumerate(G) if g == last_key]
    if last:
        return list(given[last[-1] + 1:])
    return list(given)


_key = message_key  # backwards-compatible private name
