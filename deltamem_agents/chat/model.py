"""`DeltaMemChat`: the framework-free local chat model with one persistent δ-memory per session.

    chat = DeltaMemChat.from_default()                 # offline SmolLM2-135M-Instruct + shipped adapter
    r = chat.chat("My sister is called Daphne.", session_id="alice")
    r = chat.chat("What is my sister called?", session_id="alice", max_new_tokens=16)
    for chunk in chat.stream("Hi", session_id="bob"): print(chunk.text, end="")

Each turn writes every new token into the session's δ-state exactly once, shows the model only the
visible window (runtime/session.py), and commits state + message log + metadata to the session store in
one transaction. Sessions are isolated: each has its own state, log, KV cursor and lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from ..core.state import DeltaState
from ..errors import InvalidMessageError
from ..runtime.decode import Engine, Generation, GenerationConfig
from ..runtime.history import new_messages
from ..runtime.messages import validate_message
from ..runtime.render import DEFAULT_SYSTEM_PROMPT
from ..runtime.session import Conversation, SessionRunner
from ..runtime.store import SessionRecord, SessionStore
from ..runtime.window import WindowPolicy


@dataclass
class ChatResponse:
    text: str
    finish_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    session_id: str = ""


@dataclass
class ChatChunk:
    text: str = ""
    finish_reason: str | None = None  # set on the last chunk only
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    message: dict[str, Any] | None = None  # last chunk only: the reply exactly as logged (and written)


class DeltaMemChat:
    def __init__(self, model: Any, tokenizer: Any, *, store: SessionStore | None = None,
                 policy: WindowPolicy | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                 model_name: str = "smollm2-135m-instruct", live_sessions: int = 8, use_memory: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.model_name = model_name
        self.engine = Engine(model, tokenizer)
        self.policy = policy or WindowPolicy(budget=2048, reserve=256)
        self.runner = SessionRunner(self.engine, self.policy)
        self.system_prompt = system_prompt
        self.store = store if store is not None else _default_store()
        self._live: OrderedDict[str, Conversation] = OrderedDict()
        self._live_max = live_sessions
        self._live_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward at a time on this model (2 CPU cores)
        # use_memory=False runs the same runtime without δ-mem (the window/buffer baseline on the same weights)
        self.adapter = getattr(model, "deltamem", None) if use_memory else None

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_default(cls, *, adapter: str | Path | None = "default", **kw: Any) -> DeltaMemChat:
        return cls.from_pretrained(None, adapter=adapter, **kw)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None, *, adapter: str | Path | None = "default",
                        dtype: Any = None, device: str | None = None, **kw: Any) -> DeltaMemChat:
        from .loading import load_model

        model, tok = load_model(model_dir, adapter, dtype=dtype, device=device)
        name = "smollm2-135m-instruct" if model_dir in (None, "default") else Path(str(model_dir)).name
        return cls(model, tok, model_name=kw.pop("model_name", name), **kw)

    # --- state (de)serialisation ---------------------------------------------------------------------
    def _state_expect(self) -> dict[str, Any]:
        return {"fingerprint": self.adapter.fingerprint if self.adapter is not None else None}

    def _fresh_state(self) -> DeltaState | None:
        return self.adapter.zero_state(1) if self.adapter is not None else None

    def _to_record_state(self, state: DeltaState | None) -> bytes | None:
        return state.to_bytes(self._state_expect()) if state is not None else None

    def _from_record(self, rec: SessionRecord) -> Conversation:
        state = self._fresh_state()
        if rec.state is not None and self.adapter is not None:
            state, _ = DeltaState.from_bytes(rec.state, expect=self._state_expect())
            self.adapter.check_state(state)
        meta = rec.metadata or {}
        return Conversation(rec.session_id, [dict(m) for m in rec.messages], state,
                            int(meta.get("window_start", 0)), meta.get("system_prompt", self.system_prompt),
                            rec.version)

    def _conversation(self, session_id: str) -> Conversation:
        with self._live_lock:
            conv = self._live.get(session_id)
            if conv is not None:
                self._live.move_to_end(session_id)
                return conv
        rec = self.store.get_or_create(session_id, {"system_prompt": self.system_prompt})
        conv = self._from_record(rec)
        with self._live_lock:
            self._live[session_id] = conv
            while len(self._live) > self._live_max:
                self._live.popitem(last=False)
        return conv

    def _commit(self, conv: Conversation) -> None:
        rec = self.store.commit(conv.session_id, state=self._to_record_state(conv.state), messages=conv.messages,
                                metadata=conv.metadata(), expected_version=conv.version)
        conv.version = rec.version

    def _forget_live(self, session_id: str) -> None:
        with self._live_lock:
            self._live.pop(session_id, None)

    # --- turns ---------------------------------------------------------------------------------------
    def _prepare(self, conv: Conversation, messages: Any, tools: list[Any] | None,
                 system: str | None, keep_system: bool = False) -> list[dict[str, Any]]:
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
        return new_messages(conv.messages, [m for m in msgs if m["role"] != "system"])

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
                if not new or new[-1]["role"] == "assistant":
                    raise InvalidMessageError("nothing to answer: the last new message must be a user or tool message")
                constraint = self._constraint(tools, tool_choice, parallel_tool_calls)
                k = len(new)
                while k > 0 and new[k - 1]["role"] != "assistant":
                    k -= 1
                with self._model_lock:
                    if k:  # earlier turns the caller sent (teacher-forced history) go in first
                        self.runner.add(conv, new[:k])
                    for delta in self.runner.respond(conv, new[k:], cfg, constraint, res):
                        yield ChatChunk(text=delta)
                self._commit(conv)
            except BaseException:
                conv.messages, conv.state, conv.window_start, conv.system_prompt = snapshot
                conv.cursor = None  # the KV cache may hold uncommitted tokens: rebuild on next use
                self._forget_live(session_id)
                raise
        reply = conv.messages[-1]
        calls = [{"id": c["id"], "name": c["function"]["name"], "args": _json(c["function"]["arguments"])}
                 for c in reply.get("tool_calls", [])]
        usage = {"prompt_tokens": res.prompt_tokens, "completion_tokens": len(res.token_ids),
                 "total_tokens": res.prompt_tokens + len(res.token_ids)}
        yield ChatChunk(finish_reason=res.finish_reason, tool_calls=calls, usage=usage, message=dict(reply))

    def chat(self, messages: Any, **kw: Any) -> ChatResponse:
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
                self._commit(conv)
            except BaseException:
                conv.messages, conv.state, conv.window_start = snapshot
                conv.cursor = None
                self._forget_live(session_id)
                raise
            return len(new)

    async def achat(self, messages: Any, **kw: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kw)

    async def astream(self, messages: Any, **kw: Any) -> AsyncIterator[ChatChunk]:
        """Async stream: the whole generation runs in ONE worker thread (the session lock is re-entrant and
        must be released by the thread that took it); chunks reach the event loop through a queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def work() -> None:
            try:
                for chunk in self.stream(messages, **kw):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # re-raised in the caller's task
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        fut = loop.run_in_executor(None, work)
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                await fut
                raise item
            yield item
        await fut

    def _constraint(self, tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool = True) -> Any:
        if not tools or tool_choice in (None, "none"):
            return None
        from .tools import ToolCallConstraint, normalize_tools

        return ToolCallConstraint(self.tokenizer, normalize_tools(tools), tool_choice,
                                  vocab_size=self.model.config.vocab_size, eos_token_id=self.tokenizer.eos_token_id,
                                  parallel_tool_calls=parallel_tool_calls)

    # --- sessions ------------------------------------------------------------------------------------
    def sessions(self, prefix: str | None = None) -> list[str]:
        return self.store.list(prefix)

    def history(self, session_id: str) -> list[dict[str, Any]]:
        rec = self.store.get(session_id)
        return [dict(m) for m in rec.messages] if rec else []

    def state(self, session_id: str) -> DeltaState | None:
        """The session's δ-state as last committed; waits for a turn running on it (under the turn lock, so
        a session that left the live cache mid-turn is never reloaded stale and left live). None for a session
        that does not exist (reading never creates one)."""
        with self.store.lock(session_id):
            with self._live_lock:
                live = session_id in self._live
            if not live and self.store.get(session_id) is None:
                return None
            return self._conversation(session_id).state

    def fork(self, src: str, dst: str) -> None:
        with self.store.lock(src):
            self.store.fork(src, dst)

    def delete(self, session_id: str) -> bool:
        with self.store.lock(session_id):
            self._forget_live(session_id)
            return self.store.delete(session_id)

    def export_session(self, session_id: str, path: str | Path) -> Path:
        return self.store.export_session(session_id, path)

    def import_session(self, path: str | Path, session_id: str | None = None, *, overwrite: bool = False) -> str:
        from ..runtime.store import parse_export

        _sid, state, _msgs, _meta = parse_export(Path(path).read_bytes(), str(path))
        if state is not None and self.adapter is not None:  # validate before anything is written
            st, _ = DeltaState.from_bytes(state, expect=self._state_expect())
            self.adapter.check_state(st)
        rec = self.store.import_session(path, session_id, overwrite=overwrite)
        self._forget_live(rec.session_id)
        return rec.session_id


def _json(s: str) -> Any:
    import json

    return json.loads(s)


def _default_store() -> SessionStore:
    from ..backbone import cache_dir
    from ..runtime.store import SQLiteBackend

    return SessionStore(SQLiteBackend(cache_dir() / "sessions.db"))
