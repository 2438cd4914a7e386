"""`DeltaMemChat`: the framework-free local chat model with one persistent δ-memory per session.

    chat = DeltaMemChat.from_default()                 # offline SmolLM2-135M-Instruct + shipped adapter
    r = chat.chat("My sister is called Daphne.", session_id="alice")
    r = chat.chat("What is my sister called?", session_id="alice", max_new_tokens=16)
    for chunk in chat.stream("Hi", session_id="bob"): print(chunk.text, end="")

Each turn writes every new token into the session's δ-state exactly once, shows the model only the
visible window (runtime/session.py), and commits state + message log + metadata to the session store in
one transaction. Sessions are isolated: each has its own state, log, KV cursor and lock. The live sessions
(runtime/sessions.py) and the session store are the runtime's; this module adds the public API around them.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from ..core.state import DeltaState
from ..errors import InvalidMessageError
from ..runtime.batched import TurnBatcher
from ..runtime.decode import Engine, Generation, GenerationConfig
from ..runtime.history import new_messages
from ..runtime.messages import validate_message
from ..runtime.render import DEFAULT_SYSTEM_PROMPT
from ..runtime.session import Conversation, SessionRunner
from ..runtime.sessions import LiveSessions
from ..runtime.store import LRUCache, MemoryBackend, SessionStore, SQLiteBackend
from ..runtime.store_url import is_store_url, open_store
from ..runtime.window import WindowPolicy
from .loading import model_lock
from .streaming import aiter_in_thread

__all__ = ["DeltaMemChat", "ChatResponse", "ChatChunk"]

DEFAULT_BUDGET = 2048
DEFAULT_RESERVE = 256


@dataclass
class ChatResponse:
    """A whole reply: text, why it ended, tool calls ``{"id", "name", "args"}``, token usage, session."""

    text: str
    finish_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    session_id: str = ""


@dataclass
class ChatChunk:
    """One piece of a streamed reply; the last chunk carries the finish reason, tool calls and usage."""

    text: str = ""
    finish_reason: str | None = None  # set on the last chunk only
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    message: dict[str, Any] | None = None  # last chunk only: the reply exactly as logged (and written)


class DeltaMemChat:
    """A local chat model (backbone + δ-mem adapter) serving many sessions, each with its own δ-memory.

    ``chat``/``stream`` (and ``achat``/``astream``) answer one turn of a session and write it into that
    session's memory; ``side_stream`` answers on a copy of a session's memory and writes nothing. Sessions
    persist in ``store`` (default: SQLite under the cache dir; ``db=<path>`` for another file or a
    store URL: ``postgresql://...``, ``sqlite:///...``, ``memory://``,
    ``in_memory=True`` for this process only). The prompt shows the system prompt plus the newest messages
    that fit the window ``policy`` (``budget``/``reserve`` tokens); older messages live on in the δ-state.
    A message too long for the window is still accepted: written into the δ-state in full and logged whole,
    while the window shows only its newest tokens (runtime/session.py).
    ``use_memory=False`` runs the same weights without δ-mem (the window/buffer baseline). Chat models on the
    same loaded weights share one model lock, so one forward pass runs on them at a time.
    ``max_batch > 1`` decodes concurrent turns on different sessions (from different threads) together, up to
    ``max_batch`` of them in one forward per step, after collecting them for up to ``batch_wait_ms``
    (runtime/batched.py); ``max_batch=1`` (the default) decodes each turn alone. ``close()`` stops the
    batching worker.
    """

    def __init__(self, model: Any, tokenizer: Any, *, store: SessionStore | None = None,
                 policy: WindowPolicy | None = None, system_prompt: str | None = None,
                 model_name: str = "smollm2-135m-instruct", live_sessions: int = 8, use_memory: bool = True,
                 db: str | Path | None = None, in_memory: bool = False, budget: int | None = None,
                 reserve: int | None = None, max_batch: int = 1, batch_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or batch_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and batch_wait_ms >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.model_name = model_name
        self.engine = Engine(model, tokenizer)
        self.policy = _policy(policy, budget, reserve)
        self.runner = SessionRunner(self.engine, self.policy)
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.store = _store(store, db, in_memory)
        self.adapter = getattr(model, "deltamem", None) if use_memory else None
        self.live = LiveSessions(self.store, self.adapter, capacity=live_sessions)
        self._model_lock = model_lock(model)
        self.batcher = TurnBatcher(self.runner, lock=self._model_lock, max_batch=max_batch,
                                   wait_ms=batch_wait_ms) if max_batch > 1 else None

    def close(self) -> None:
        """Stop the batching worker (if any); turns after this fail. The session store stays open."""
        if self.batcher is not None:
            self.batcher.close()

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_default(cls, *, adapter: str | Path | None = "default", **kw: Any) -> DeltaMemChat:
        """The offline default backbone with the shipped adapter (if any); keywords as `from_pretrained`."""
        return cls.from_pretrained(None, adapter=adapter, **kw)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None, *, adapter: str | Path | None = "default",
                        dtype: Any = None, device: str | None = None, **kw: Any) -> DeltaMemChat:
        """A chat model on a local backbone dir (None: the default one) + adapter; weights load once per
        process. Other keywords go to the constructor: ``db``, ``in_memory``, ``store``, ``budget``,
        ``reserve``, ``policy``, ``system_prompt``, ``use_memory``, ``model_name``, ``live_sessions``,
        ``max_batch``, ``batch_wait_ms``."""
        from .loading import load_model

        model, tok = load_model(model_dir, adapter, dtype=dtype, device=device)
        name = "smollm2-135m-instruct" if model_dir in (None, "default", "") else Path(str(model_dir)).name
        return cls(model, tok, model_name=kw.pop("model_name", name), **kw)

    def on_same_weights(self, *, use_memory: bool | None = None, in_memory: bool = True, **kw: Any) -> DeltaMemChat:
        """Another chat model on these loaded weights (sharing their model lock) with its own sessions:
        in memory by default, or ``db=``/``store=``. Unset settings (window, system prompt, name, memory on
        or off) are copied from this one; batching across sessions is off unless ``max_batch=`` is given."""
        if "db" in kw or "store" in kw:
            in_memory = False
        if "budget" not in kw and "reserve" not in kw:
            kw.setdefault("policy", self.policy)
        kw.setdefault("system_prompt", self.system_prompt)
        kw.setdefault("model_name", self.model_name)
        use = self.adapter is not None if use_memory is None else use_memory
        return DeltaMemChat(self.model, self.tokenizer, use_memory=use, in_memory=in_memory, **kw)

    # --- live sessions -------------------------------------------------------------------------------
    @property
    def _live(self) -> LRUCache[str, Conversation]:
        return self.live.conversations

    def _conversation(self, session_id: str) -> Conversation:
        return self.live.get(session_id, self.system_prompt)

    def lock(self, session_id: str, *, timeout: float | None = None) -> AbstractContextManager[None]:
        """The session's turn lock (re-entrant): hold it to read a session and act on it atomically."""
        return self.store.lock(session_id, timeout=timeout)

    # --- turns ---------------------------------------------------------------------------------------
    def _prepare(self, conv: Conversation, messages: Any, tools: list[Any] | None,
                 system: str | None, keep_system: bool = False, all_new: bool = False) -> list[dict[str, Any]]:
        """Set the turn's system prompt on `conv`; return the messages of `messages` that are new for it
        (all of them with `all_new`)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list):
            raise InvalidMessageError("messages must be a string or a list of message dicts")
        msgs = [validate_message(m) for m in messages]
        systems = [m["content"] for m in msgs if m["role"] == "system"]
        if keep_system and system is None and not systems and not tools:
            return new_messages(conv.messages, [m for m in msgs if m["role"] != "system"])
        base = system if system is not None else (systems[-1] if systems else self.system_prompt)
        if tools:
            from .tools import normalize_tools, tools_system_text

            base = base + "\n\n" + tools_system_text(normalize_tools(tools))
        conv.system_prompt = base
        given = [m for m in msgs if m["role"] != "system"]
        return given if all_new else new_messages(conv.messages, given)

    def _respond(self, conv: Conversation, new: list[dict[str, Any]], tools: list[Any] | None, tool_choice: Any,
                 cfg: GenerationConfig, parallel_tool_calls: bool, res: Generation) -> Iterator[ChatChunk]:
        """Write the `new` messages into `conv` and generate the reply (text chunks only)."""
        if not new or new[-1]["role"] == "assistant":
            raise InvalidMessageError("nothing to answer: the last new message must be a user or tool message")
        constraint = self._constraint(tools, tool_choice, parallel_tool_calls)
        k = len(new)
        while k > 0 and new[k - 1]["role"] != "assistant":
            k -= 1
        if self.batcher is None:
            with self._model_lock:
                if k:  # earlier turns the caller sent (teacher-forced history) go in first
                    self.runner.add(conv, new[:k])
                for delta in self.runner.respond(conv, new[k:], cfg, constraint, res):
                    yield ChatChunk(text=delta)
            return
        if k:
            with self._model_lock:
                self.runner.add(conv, new[:k])
        # The batcher's worker takes the model lock for each batch, so it must not be held while waiting here.
        for delta in self.batcher.respond(conv, new[k:], cfg, constraint, res):
            yield ChatChunk(text=delta)

    @staticmethod
    def _last_chunk(conv: Conversation, res: Generation) -> ChatChunk:
        reply = conv.messages[-1]
        calls = [{"id": c["id"], "name": c["function"]["name"], "args": _json(c["function"]["arguments"])}
                 for c in reply.get("tool_calls", [])]
        usage = {"prompt_tokens": res.prompt_tokens, "completion_tokens": len(res.token_ids),
                 "total_tokens": res.prompt_tokens + len(res.token_ids)}
        return ChatChunk(finish_reason=res.finish_reason, tool_calls=calls, usage=usage, message=dict(reply))

    def stream(self, messages: Any, *, session_id: str = "default", tools: list[Any] | None = None,
               tool_choice: Any = "auto", system: str | None = None, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
               stop: list[str] | tuple[str, ...] = (), parallel_tool_calls: bool = True) -> Iterator[ChatChunk]:
        """Yield text deltas as they are decoded; the last chunk carries finish reason, tool calls, usage."""
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               seed=seed, stop=tuple(stop or ()))
        with self.store.lock(session_id):
            conv = self._conversation(session_id)
            snapshot = (list(conv.messages), conv.state, conv.window_start, conv.system_prompt)
            res = Generation()
            try:
                new = self._prepare(conv, messages, tools, system)
                yield from self._respond(conv, new, tools, tool_choice, cfg, parallel_tool_calls, res)
                self.live.commit(conv)
            except BaseException:
                conv.messages, conv.state, conv.window_start, conv.system_prompt = snapshot
                conv.cursor = None  # the KV cache may hold uncommitted tokens: rebuild on next use
                self.live.forget(session_id)
                raise
        yield self._last_chunk(conv, res)

    def side_stream(self, messages: Any, *, session_id: str | None = None, tools: list[Any] | None = None,
                    tool_choice: Any = "auto", system: str | None = None, max_new_tokens: int = 128,
                    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                    stop: list[str] | tuple[str, ...] = (), parallel_tool_calls: bool = True) -> Iterator[ChatChunk]:
        """Like `stream`, but read-only: the reply is generated on a throw-away copy of the session's δ-state
        as last committed (an empty state without `session_id`, or for a session that does not exist), with
        only the system prompt and `messages` (all of them) in the prompt. Nothing is written, logged or
        created."""
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               seed=seed, stop=tuple(stop or ()))
        rec = self.store.get(session_id) if session_id is not None else None
        conv = self.live.detached(rec, self.system_prompt)
        new = self._prepare(conv, messages, tools, system, all_new=True)
        res = Generation()
        yield from self._respond(conv, new, tools, tool_choice, cfg, parallel_tool_calls, res)
        yield self._last_chunk(conv, res)

    def chat(self, messages: Any, **kw: Any) -> ChatResponse:
        """The whole reply of one turn (keywords as `stream`)."""
        text, last = [], ChatChunk()
        for chunk in self.stream(messages, **kw):
            text.append(chunk.text)
            last = chunk
        return ChatResponse("".join(text), last.finish_reason or "stop", last.tool_calls, last.usage or {},
                            kw.get("session_id", "default"))

    def add_messages(self, messages: list[dict[str, Any]], *, session_id: str = "default") -> int:
        """Write messages into a session's memory without generating; returns how many were new."""
        with self.store.lock(session_id):
            conv = self._conversation(session_id)
            snapshot = (list(conv.messages), conv.state, conv.window_start)
            try:
                new = self._prepare(conv, messages, None, None, keep_system=True)
                with self._model_lock:
                    self.runner.add(conv, new)
                self.live.commit(conv)
            except BaseException:
                conv.messages, conv.state, conv.window_start = snapshot
                conv.cursor = None
                self.live.forget(session_id)
                raise
            return len(new)

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens these (non-system) messages take in the prompt: the sum of their chat-template blocks."""
        r = self.runner.renderer(self.system_prompt)
        return sum(len(r.message_ids(m)) for m in messages)

    async def achat(self, messages: Any, **kw: Any) -> ChatResponse:
        """`chat` in a worker thread."""
        return await asyncio.to_thread(self.chat, messages, **kw)

    async def astream(self, messages: Any, **kw: Any) -> AsyncIterator[ChatChunk]:
        """`stream` in one worker thread, its chunks handed to the event loop; leaving early rolls the turn
        back."""
        async for chunk in aiter_in_thread(lambda: self.stream(messages, **kw)):
            yield chunk

    def _constraint(self, tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool = True) -> Any:
        if not tools or tool_choice in (None, "none"):
            return None
        from .tools import ToolCallConstraint, normalize_tools

        return ToolCallConstraint(self.tokenizer, normalize_tools(tools), tool_choice,
                                  vocab_size=self.model.config.vocab_size, eos_token_id=self.tokenizer.eos_token_id,
                                  parallel_tool_calls=parallel_tool_calls)

    # --- sessions ------------------------------------------------------------------------------------
    def sessions(self, prefix: str | None = None) -> list[str]:
        """Sorted session ids, optionally only those starting with `prefix`."""
        return self.store.list(prefix)

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """The session's whole message log as committed ([] for a session that does not exist)."""
        rec = self.store.get(session_id)
        return [dict(m) for m in rec.messages] if rec else []

    def session_view(self, session_id: str) -> tuple[list[dict[str, Any]], int]:
        """(the session's whole message log, index of the first message in its visible window), as last
        committed; ([], 0) for a session that does not exist."""
        rec = self.store.get(session_id)
        if rec is None:
            return [], 0
        return [dict(m) for m in rec.messages], int((rec.metadata or {}).get("window_start", 0))

    def state(self, session_id: str) -> DeltaState | None:
        """The session's δ-state as last committed; waits for a turn running on it (under the turn lock, so
        a session that left the live cache mid-turn is never reloaded stale and left live). None for a session
        that does not exist (reading never creates one)."""
        with self.store.lock(session_id):
            if not self.live.is_live(session_id) and self.store.get(session_id) is None:
                return None
            return self._conversation(session_id).state

    def fork(self, src: str, dst: str) -> None:
        """Copy a session (state, log, metadata) to a new id; the two then evolve independently."""
        with self.store.lock(src):
            self.store.fork(src, dst)

    def delete(self, session_id: str) -> bool:
        """Forget a session everywhere (live copy and store). True if it existed."""
        with self.store.lock(session_id):
            self.live.forget(session_id)
            return self.store.delete(session_id)

    def export_session(self, session_id: str, path: str | Path) -> Path:
        """Write the session to a JSON export file (checksummed, no pickle); returns the path."""
        return self.store.export_session(session_id, path)

    def import_session(self, path: str | Path, session_id: str | None = None, *, overwrite: bool = False) -> str:
        """Load an export file (its state checked against this model's adapter first); returns the session id."""
        from ..runtime.store import parse_export

        _sid, state, _msgs, _meta = parse_export(Path(path).read_bytes(), str(path))
        if state is not None and self.adapter is not None:  # validate before anything is written
            self.live.decode_state(state)
        rec = self.store.import_session(path, session_id, overwrite=overwrite)
        self.live.forget(rec.session_id)
        return rec.session_id


def _json(s: str) -> Any:
    import json

    return json.loads(s)


def _policy(policy: WindowPolicy | None, budget: int | None, reserve: int | None) -> WindowPolicy:
    if policy is not None:
        if budget is not None or reserve is not None:
            raise ValueError("pass either policy= or budget=/reserve=, not both")
        return policy
    return WindowPolicy(budget=DEFAULT_BUDGET if budget is None else budget,
                        reserve=DEFAULT_RESERVE if reserve is None else reserve)


def _store(store: SessionStore | None, db: str | Path | None, in_memory: bool) -> SessionStore:
    if store is not None:
        if db is not None or in_memory:
            raise ValueError("pass either store= or db=/in_memory=, not both")
        return store
    if in_memory or str(db) == ":memory:":
        return SessionStore(MemoryBackend())
    if is_store_url(db):  # memory://, sqlite:///..., postgresql://...
        return open_store(db)
    if db is None:
        from ..backbone import cache_dir

        db = cache_dir() / "sessions.db"
    path = Path(db).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SessionStore(SQLiteBackend(path))
