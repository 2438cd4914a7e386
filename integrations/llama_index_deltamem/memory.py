"""`DeltaMemMemory`: LlamaIndex's `BaseMemory` interface over one δ-mem session.

    memory = DeltaMemMemory.from_defaults(llm=llm, session_id="alice")
    SimpleChatEngine.from_defaults(llm=llm, memory=memory)           # or CondensePlusContextChatEngine,
    await FunctionAgent(tools=..., llm=llm).run("...", memory=memory)  # FunctionAgent / AgentWorkflow

Why a `BaseMemory` and not a `BaseMemoryBlock` inside `Memory`: a block only receives messages after
`Memory`'s own token FIFO ejects them (late, in batches, after they were already shown) and can only
contribute *prompt text*; the δ-state is not text, it is read by the model's attention. δ-mem needs every
token written once, in order, by the same forward pass that answers, and the visible window decided by the
runtime's `WindowPolicy` (the one the adapter was trained with). So the session is the memory: the message
log, the window and the δ-state live in the `DeltaMemChat` session store (persistent with a SQLite
backend), and this class is a thin view of it.

Semantics (``session_id`` = the deltamem session):
- ``put``/``put_messages``: user and tool messages wait as *pending* until the turn's assistant message
  arrives; then the turn is committed. If the `DeltaMemLLM` already answered that turn in this session (it
  writes the messages it was given plus its reply), nothing is written twice -- the messages the model wrote
  are the record of the turn (matched by role, and for assistant messages by whether they call tools, since
  frameworks strip or reformat replies); whatever it did not write (e.g. the tool result and answer of a
  ``return_direct`` tool, or an early-stopping summary) is written with ``DeltaMemChat.add_messages``. System messages are not stored (they are the prompt's, not the
  conversation's).
- ``get()``: what the prompt should show -- the session's visible window plus the pending messages, tagged
  with the session id so the LLM answers in this session. Evicted messages are not resent: they live on only
  in the δ-state. ``get_all()`` returns the whole log.
- ``set(messages)``: a written memory cannot be un-written: if `messages` continue the current history only
  the new ones are added; otherwise the session is reset and `messages` are written afresh.
- ``reset()``: deletes the session (δ-state, log, metadata) from the store.
Pending messages are held by this object (not persisted) until their turn completes.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.types import BaseMemory

from ._convert import aligned_new, runtime_role, same_kind, tagged, to_chat_message, to_runtime_message
from .llm import DeltaMemLLM

__all__ = ["DeltaMemMemory"]


class DeltaMemMemory(BaseMemory):
    """LlamaIndex memory backed by one δ-mem session of a :class:`DeltaMemLLM`."""

    session_id: str = Field(default="default", description="The deltamem session this memory is.")

    _llm: DeltaMemLLM = PrivateAttr()
    _acked: Optional[int] = PrivateAttr(default=None)  # log messages this memory has accounted for
    _pending: List[ChatMessage] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, llm: DeltaMemLLM, session_id: Optional[str] = None, **kwargs: Any) -> None:
        if not isinstance(llm, DeltaMemLLM):
            raise TypeError(f"DeltaMemMemory needs a DeltaMemLLM (the model that reads and writes the δ-state), "
                            f"got {type(llm).__name__}")
        if llm.stateless:
            raise ValueError("DeltaMemMemory needs a stateful DeltaMemLLM; stateless=True is for the "
                             "LlamaIndex-memory baselines")
        super().__init__(session_id=session_id or llm.session_id, **kwargs)
        self._llm = llm.for_session(self.session_id)

    @classmethod
    def class_name(cls) -> str:
        return "DeltaMemMemory"

    @classmethod
    def from_defaults(cls, llm: Optional[DeltaMemLLM] = None, session_id: Optional[str] = None,
                      chat_history: Optional[List[ChatMessage]] = None, **kwargs: Any) -> "DeltaMemMemory":
        """Memory for `session_id` (default: the LLM's). Engine arguments such as ``token_limit`` are ignored:
        the window budget is the runtime's. ``chat_history`` is applied with :meth:`set`. Without `llm`, a
        DeltaMemLLM set explicitly as ``Settings.llm`` (``configure_settings``) is used, so
        ``SimpleChatEngine.from_defaults(memory_cls=DeltaMemMemory)`` works after ``configure_settings``."""
        if llm is None:
            from llama_index.core.settings import Settings

            llm = Settings._llm if isinstance(Settings._llm, DeltaMemLLM) else None
        if llm is None:
            raise ValueError("DeltaMemMemory.from_defaults needs llm=DeltaMemLLM(...) (the δ-memory lives in "
                             "that model's session store), or configure_settings(llm=DeltaMemLLM(...)) first")
        mem = cls(llm=llm, session_id=session_id)
        if chat_history:
            mem.set(chat_history)
        return mem

    # --- views ---------------------------------------------------------------------------------------------
    @property
    def llm(self) -> DeltaMemLLM:
        """The DeltaMemLLM bound to this memory's session (pass it to engines and agents)."""
        return self._llm

    def _record(self) -> tuple[list[dict[str, Any]], int]:
        return self._llm.client.session_view(self.session_id)

    def _sync(self, log: list[dict[str, Any]], adopt: bool) -> None:
        if self._acked is None or self._acked > len(log):  # first use, or the session was reset elsewhere
            self._acked = len(log)
        elif adopt and not self._pending:  # written by someone else while this memory was idle
            self._acked = len(log)

    def get(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        """The visible window of the session plus pending messages (what the next prompt should show)."""
        with self._lock:
            log, start = self._record()
            self._sync(log, adopt=True)
            acked = self._acked or 0
            window = log[start:acked] if start < acked else []
            return ([to_chat_message(m, self.session_id) for m in window]
                    + [tagged(m, self.session_id) for m in self._pending])

    def get_all(self) -> List[ChatMessage]:
        """The whole conversation (including messages evicted from the window) plus pending messages."""
        with self._lock:
            log, _ = self._record()
            self._sync(log, adopt=True)
            return ([to_chat_message(m, self.session_id) for m in log[:self._acked]]
                    + [tagged(m, self.session_id) for m in self._pending])

    # --- writes --------------------------------------------------------------------------------------------
    def put(self, message: ChatMessage) -> None:
        self.put_messages([message])

    def put_messages(self, messages: List[ChatMessage]) -> None:
        with self._lock:
            log, _ = self._record()
            self._sync(log, adopt=False)
            for m in messages:
                if runtime_role(m) != "system":
                    to_runtime_message(m)  # validate now, not at commit time
                    self._pending.append(m)
            if self._pending and runtime_role(self._pending[-1]) == "assistant":
                self._flush()

    def _flush(self) -> None:
        """Commit the pending turn: skip what the LLM already wrote, write the rest."""
        chat, sid = self._llm.client, self.session_id
        with chat.lock(sid):
            log, _ = self._record()
            self._sync(log, adopt=False)
            grown = log[self._acked:]
            pending = [to_runtime_message(m) for m in self._pending]
            i = 0
            while i < len(pending) and i < len(grown) and same_kind(pending[i], grown[i]):
                i += 1
            rest = pending[i:]
            if rest:
                chat.add_messages(log + rest, session_id=sid)
            self._acked = len(log) + len(rest)
            self._pending = []

    def set(self, messages: List[ChatMessage]) -> None:
        with self._lock:
            log, _ = self._record()
            self._sync(log, adopt=True)
            view = log[:self._acked] + [to_runtime_message(m) for m in self._pending]
            given = [m for m in messages if runtime_role(m) != "system"]
            new = aligned_new(view, [to_runtime_message(m) for m in given])
            if new is None or (not given and view):
                self.reset()
                new_msgs = given
            else:
                new_msgs = given[len(given) - len(new):]
            if new_msgs:
                self.put_messages(list(new_msgs))

    def reset(self) -> None:
        """Forget the session: δ-state, message log and metadata are deleted from the store."""
        with self._lock:
            self._llm.client.delete(self.session_id)
            self._acked = 0
            self._pending = []
