"""The server's one entry to the model: a turn on a session (or a stateless turn) as a stream of chunks.

Everything the HTTP layer asks of the model goes through :class:`ChatEngine.turn`, so another engine (one
that batches decoding across sessions) can replace this one without touching the routes. This one runs
each turn on a `DeltaMemChat`: a turn on a session takes that session's turn lock, waiting at most
``busy_timeout`` seconds for a turn already running on it (then `SessionBusyError`, answered 409); turns
on different sessions share the model lock, one forward pass at a time; when the chat model was built with
``max_batch > 1``, concurrent turns on different sessions are decoded together in one forward per step
(each request still iterates its own turn in its own thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from ..chat import ChatChunk, DeltaMemChat

__all__ = ["ChatEngine", "TurnRequest"]


@dataclass
class TurnRequest:
    """One turn as the routes hand it to the engine (messages in the chat model's form)."""

    messages: list[dict[str, Any]]
    session_id: str | None = None  # None: stateless (nothing read, written or stored)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


class ChatEngine:
    def __init__(self, chat: "DeltaMemChat", *, busy_timeout: float = 2.0) -> None:
        self.chat = chat
        self.busy_timeout = busy_timeout

    @property
    def model_name(self) -> str:
        return self.chat.model_name

    def turn(self, req: TurnRequest) -> Iterator["ChatChunk"]:
        """Text chunks as decoded, then the last chunk (finish reason, logged reply, usage). Blocking: iterate
        it in one thread from start to end (the session's turn lock belongs to the thread that took it)."""
        kw = dict(tools=req.tools or None, tool_choice=req.tool_choice, max_new_tokens=req.max_new_tokens,
                  temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=tuple(req.stop),
                  parallel_tool_calls=req.parallel_tool_calls)
        if req.session_id is None:
            yield from self.chat.side_stream(req.messages, session_id=None, **kw)
            return
        with self.chat.lock(req.session_id, timeout=self.busy_timeout):
            yield from self.chat.stream(req.messages, session_id=req.session_id, **kw)

    def lock(self, session_id: str):
        """A session's turn lock, waited for at most ``busy_timeout`` seconds (session routes that write)."""
        return self.chat.lock(session_id, timeout=self.busy_timeout)
