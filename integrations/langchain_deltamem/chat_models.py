"""`ChatDeltaMem`: a LangChain chat model on a local backbone whose memory is a δ-state per thread.

    from langchain_deltamem import ChatDeltaMem
    llm = ChatDeltaMem(db_path="sessions.db")               # SmolLM2-135M-Instruct + the shipped δ-mem adapter
    cfg = {"configurable": {"thread_id": "alice"}}
    llm.invoke("My sister is called Daphne.", config=cfg)
    llm.invoke("What is my sister called?", config=cfg)     # only the new message is sent: memory does the rest

Which session ("thread") a call belongs to, first match wins:
  1. a `session_id=` keyword of the call or of `.bind(session_id=...)`;
  2. the `session_id` field of the model;
  3. ``config["configurable"][session_key]`` (``session_key`` defaults to ``"thread_id"``; a LangGraph graph's
     config reaches the model through the runnable-config context, a direct ``invoke(..., config=...)``
     through the overridden ``invoke``/``stream`` and their async twins);
  4. the session ``"default"``.
Thread ids that are not valid session ids (`deltamem_agents.chat.validate_session_id`) are mapped to
``"h-<sha256 prefix>"``; :meth:`ChatDeltaMem.session_for` shows the mapping.

What a call writes into the thread's memory is decided by the chat model's history policy (`DeltaMemChat`):
the caller may resend the whole history every call (LangGraph), send only the new messages, trim old
messages in front, or edit earlier ones (edits are ignored: a written memory cannot be un-written). Only the
messages after the part the session has already seen are written, each exactly once.

Persistence: the δ-state, the message log and the window position of every thread live in the deltamem
session store (`db_path`, SQLite), so a thread's memory survives a restart next to a persistent LangGraph
checkpointer (`SqliteSaver`). :meth:`ChatDeltaMem.forget_thread` deletes a thread's δ-session, and
`DeltaMemCheckpointer` does it whenever the graph's ``delete_thread`` runs.

Tools: `bind_tools` renders the tools into the system prompt (Hermes ``<tool_call>`` format) and
``tool_choice`` "any"/"required"/True or a tool name *forces* a call by grammar-constrained decoding, so
`with_structured_output` works. ``parallel_tool_calls`` is off by default (one call per turn: small models
repeat calls until the token limit otherwise).

The model instance is cheap: weights load lazily, once per process, and all instances with the same
backbone/adapter/database/window share one `DeltaMemChat` (`deltamem_agents.chat.shared_chat`; so they share
the live sessions, their locks and KV caches). ``use_memory=False`` runs the same weights without δ-mem and *without
state*: each call runs in a throw-away session that sees exactly the messages given (the baseline model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
import warnings
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from deltamem_agents.chat import (TOOL_CALL_OPEN, StreamHoldback, aiter_in_thread, clear_shared_chats,
                                  validate_session_id)
from deltamem_agents.errors import InvalidSessionIdError

from ._convert import from_deltamem, to_deltamem

__all__ = ["ChatDeltaMem", "clear_client_cache"]

DEFAULT_MAX_TOKENS = 128
_IGNORED_CALL_KWARGS = ("ls_structured_output_format", "stream", "strict", "response_format")


def clear_client_cache() -> None:
    """Forget the shared `DeltaMemChat` clients (their live sessions); weights stay loaded.

    The next `ChatDeltaMem` builds a fresh client that reads its sessions back from the store -- what a
    process restart does (used by the persistence tests)."""
    clear_shared_chats()


def _session_id(raw: Any) -> str:
    s = str(raw)
    try:
        return validate_session_id(s)
    except InvalidSessionIdError:
        return "h-" + hashlib.sha256(s.encode("utf-8")).hexdigest()[:40]


class ChatDeltaMem(BaseChatModel):
    """LangChain chat model over `deltamem_agents.chat.DeltaMemChat` (a local backbone + δ-mem).

    See the module docstring for thread routing and the history policy."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = "default"
    """Backbone: ``"default"`` (the offline SmolLM2-135M-Instruct) or a local Hugging Face model directory."""
    adapter: str | None = "default"
    """δ-mem adapter: ``"default"`` (the shipped one, if any), ``"none"``/None, or an adapter directory."""
    model_name: str | None = None
    """Name reported in `response_metadata["model_name"]` and traces (default: derived from `model`)."""
    db_path: str | None = None
    """SQLite file of the δ-sessions (default ``~/.cache/deltamem-agents/sessions.db``); ``":memory:"`` keeps
    them in this process only."""
    use_memory: bool = True
    """False: the same weights without δ-mem and without state (every call sees only the messages given)."""
    session_id: str | None = None
    session_key: str = "thread_id"
    """The ``config["configurable"]`` key that names the δ-session (e.g. ``"user_id"`` to keep one memory per
    user across LangGraph threads)."""
    system_prompt: str | None = None
    """Default system prompt when the messages have no `SystemMessage`."""
    window_budget: int = 2048
    """Visible window in tokens (system prompt + recent messages + reply reserve); older messages live on only
    in the δ-state."""
    window_reserve: int = 256
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    """Accepted for compatibility; local generation is not interrupted."""
    max_retries: int | None = None
    """Accepted for compatibility; local generation is not retried."""
    streaming: bool = False
    parallel_tool_calls: bool = False
    """Allow several tool calls in one turn. Off by default: small models tend to repeat a call until the
    token limit; ``bind_tools(..., parallel_tool_calls=True)`` turns it on per binding."""
    dtype: str | None = None
    device: str | None = None
    client: Any = Field(default=None, exclude=True)
    """An existing `DeltaMemChat` to use instead of the shared one (then `model`/`adapter`/`db_path`/window
    fields are not used to build one)."""

    _client: Any = PrivateAttr(default=None)

    # ------------------------------------------------------------------ LangChain identity
    @property
    def _llm_type(self) -> str:
        return "deltamem"

    @property
    def resolved_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.client is not None:
            return str(getattr(self.client, "model_name", "deltamem"))
        return "smollm2-135m-instruct" if self.model in ("default", "") else Path(self.model).name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.resolved_model_name, "adapter": self.adapter, "use_memory": self.use_memory,
                "window_budget": self.window_budget, "window_reserve": self.window_reserve,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = self._get_invocation_params(stop=stop, **kwargs)
        ls = LangSmithParams(ls_provider="deltamem", ls_model_name=str(kwargs.get("model") or self.resolved_model_name),
                             ls_model_type="chat",
                             ls_temperature=params.get("temperature", self.temperature) or 0.0)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            ls["ls_max_tokens"] = int(max_tokens)
        stops = stop or params.get("stop") or self.stop
        if stops:
            ls["ls_stop"] = list(stops)
        return ls

    def _resolve_model_profile(self) -> ModelProfile | None:
        return ModelProfile(
            max_input_tokens=self.window_budget - self.window_reserve,
            max_output_tokens=self.window_reserve,
            text_inputs=True, text_outputs=True, image_inputs=False, image_url_inputs=False,
            pdf_inputs=False, audio_inputs=False, video_inputs=False,
            tool_calling=True, tool_choice=True, tool_call_streaming=False, structured_output=False,
            mid_conversation_system_messages=False, temperature=True,
        )

    # ------------------------------------------------------------------ the shared chat model
    @property
    def chat(self) -> Any:
        """The `DeltaMemChat` doing the work (built or fetched from the process cache on first use)."""
        if self.client is not None:
            return self.client
        if self._client is None:
            self._client = self._shared_client()
        return self._client

    def _shared_client(self) -> Any:
        from deltamem_agents.chat import shared_chat

        return shared_chat(None if self.model in ("default", "") else self.model,
                           adapter=self.adapter if self.use_memory else "none", dtype=self.dtype, device=self.device,
                           db=self.db_path if self.use_memory else None,
                           in_memory=not self.use_memory or self.db_path == ":memory:",
                           budget=self.window_budget, reserve=self.window_reserve, system_prompt=self.system_prompt,
                           use_memory=self.use_memory, model_name=self.resolved_model_name)

    @property
    def tokenizer(self) -> Any:
        return self.chat.tokenizer

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` with the backbone's own tokenizer (never GPT-2)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens these messages take in the prompt: system text plus each message's chat-template block."""
        msgs, system = to_deltamem(messages)
        n = self.chat.count_tokens(msgs)
        extra = system or ""
        if tools:
            from deltamem_agents.chat import tools_system_text

            extra += "\n\n" + tools_system_text([convert_to_openai_tool(t) for t in tools])
        if extra:
            n += len(self.get_token_ids(extra))
        return n

    # ------------------------------------------------------------------ sessions / threads
    def session_for(self, thread_id: Any) -> str:
        """The δ-session id a thread (or any configurable value) maps to."""
        return _session_id(thread_id)

    def _resolve_session(self, kwargs: dict[str, Any]) -> tuple[str, bool]:
        """(session id, ephemeral). Pops the routing keywords from `kwargs`."""
        explicit = kwargs.pop("session_id", None)
        from_config = kwargs.pop("_deltamem_thread", None)
        if not self.use_memory:
            return f"eph-{uuid.uuid4().hex}", True
        if explicit is not None:
            return _session_id(explicit), False
        if self.session_id is not None:
            return _session_id(self.session_id), False
        if from_config is None:
            from_config = (ensure_config().get("configurable") or {}).get(self.session_key)
        return (_session_id(from_config) if from_config is not None else "default"), False

    def _inject_thread(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> None:
        """Record the thread named by `config` (or, without it, by the runnable-config context) in `kwargs`,
        unless the call already names its session."""
        if "_deltamem_thread" in kwargs or "session_id" in kwargs:
            return
        conf = ensure_config(config).get("configurable") or {}
        if conf.get(self.session_key) is not None:
            kwargs["_deltamem_thread"] = conf[self.session_key]

    def forget_thread(self, thread_id: Any) -> bool:
        """Delete the thread's δ-session (state, log, metadata). True if it existed."""
        return bool(self.chat.delete(_session_id(thread_id)))

    def fork_thread(self, src: Any, dst: Any) -> None:
        """Copy a thread's δ-session to another thread id (like a checkpointer's ``copy_thread``)."""
        self.chat.fork(_session_id(src), _session_id(dst))

    def thread_history(self, thread_id: Any) -> list[BaseMessage]:
        """Every message the thread's memory has been written with, as LangChain messages."""
        return [from_deltamem(m) for m in self.chat.history(_session_id(thread_id))]

    def thread_state(self, thread_id: Any) -> Any:
        """The thread's `DeltaState` (None when the model runs without δ-mem)."""
        return self.chat.state(_session_id(thread_id))

    def threads(self) -> list[str]:
        return list(self.chat.sessions())

    # ------------------------------------------------------------------ runnable entry points (config -> thread)
    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        self._inject_thread(config, kwargs)
        return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        self._inject_thread(config, kwargs)
        return await super().ainvoke(input, config, stop=stop, **kwargs)

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        self._inject_thread(config, kwargs)
        return super().stream(input, config, stop=stop, **kwargs)

    def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        self._inject_thread(config, kwargs)
        return super().astream(input, config, stop=stop, **kwargs)

    # ------------------------------------------------------------------ tools
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: dict | str | bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any form `convert_to_openai_tool` accepts).

        ``tool_choice``: None/"auto" (the model decides), "none", "any"/"required"/True (at least one call,
        forced by constrained decoding), a tool name or ``{"type": "function", "function": {"name": ...}}``
        (that tool is called)."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is True:
            tool_choice = "required"
        elif tool_choice is False:
            tool_choice = None
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    # ------------------------------------------------------------------ generation
    def _call_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        for k in _IGNORED_CALL_KWARGS:
            kwargs.pop(k, None)
        kwargs.pop("model", None)
        stops = list(self.stop or []) + [s for s in (stop or []) if s not in (self.stop or [])]
        max_tokens = kwargs.pop("max_tokens", None) or kwargs.pop("max_new_tokens", None) or self.max_tokens
        params: dict[str, Any] = {
            "max_new_tokens": int(max_tokens or DEFAULT_MAX_TOKENS),
            "temperature": float(kwargs.pop("temperature", self.temperature) or 0.0),
            "top_p": float(kwargs.pop("top_p", self.top_p) or 1.0),
            "top_k": int(kwargs.pop("top_k", self.top_k) or 0),
            "seed": kwargs.pop("seed", self.seed),
            "stop": stops,
        }
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        if tools:
            params["tools"] = [t if isinstance(t, dict) and "function" in t else convert_to_openai_tool(t)
                               for t in tools]
            if choice is True or choice == "any":
                choice = "required"
            params["tool_choice"] = choice if choice is not None else "auto"
        parallel = kwargs.pop("parallel_tool_calls", None)
        params["parallel_tool_calls"] = self.parallel_tool_calls if parallel is None else bool(parallel)
        for k in ("timeout", "max_retries"):
            kwargs.pop(k, None)
        if kwargs:
            warnings.warn(f"ChatDeltaMem ignores the call arguments {sorted(kwargs)}", stacklevel=4)
        return params

    def _run(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
             ) -> Iterator[tuple[str, Any]]:
        """Yield ("text", delta) while decoding, then ("final", info)."""
        kwargs = dict(kwargs)
        sid, ephemeral = self._resolve_session(kwargs)
        params = self._call_params(stop, kwargs)
        msgs, system = to_deltamem(messages)
        if system is None and self.system_prompt is not None:
            system = self.system_prompt
        chat = self.chat
        hold = StreamHoldback(params["stop"], bool(params.get("tools")))
        last = None
        try:
            # the session's (re-entrant) turn lock is held until the logged reply is read back, so a concurrent
            # turn on the same thread cannot slip in between
            with chat.lock(sid):
                for ch in chat.stream(msgs, session_id=sid, system=system, **params):
                    if ch.finish_reason is None and ch.usage is None:
                        out = hold.push(ch.text)
                        if out:
                            yield "text", out
                    else:
                        last = ch
                log = chat.history(sid)
            reply = log[-1] if log and log[-1].get("role") == "assistant" else {"role": "assistant",
                                                                                  "content": hold.text}
        finally:
            if ephemeral:
                try:
                    chat.delete(sid)
                except Exception:  # noqa: BLE001 - cleanup must not hide the real error
                    pass
        content = reply.get("content", "")
        calls = [{"id": c["id"], "name": c["function"]["name"], "args": json.loads(c["function"]["arguments"])}
                 for c in reply.get("tool_calls", ())]
        invalid: list[dict[str, Any]] = []
        if not calls and TOOL_CALL_OPEN in content and params.get("tools"):
            from deltamem_agents.chat import parse_tool_calls

            _c, _ok, bad = parse_tool_calls(content)
            invalid = [{"type": "invalid_tool_call", "id": b["id"], "name": b.get("name"), "args": b["arguments"],
                        "error": b["error"]} for b in bad]
        usage = (last.usage if last is not None else None) or {}
        finish = (last.finish_reason if last is not None else None) or "stop"
        yield "final", {
            "content": content, "rest": hold.rest(content), "tool_calls": calls, "invalid_tool_calls": invalid,
            "usage": UsageMetadata(input_tokens=int(usage.get("prompt_tokens", 0)),
                                   output_tokens=int(usage.get("completion_tokens", 0)),
                                   total_tokens=int(usage.get("total_tokens", 0))),
            "response_metadata": {"model_name": self.resolved_model_name, "finish_reason": finish,
                                  "model_provider": "deltamem", "session_id": None if ephemeral else sid},
        }

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        info: dict[str, Any] = {}
        for kind, val in self._run(messages, stop, kwargs):
            if kind == "final":
                info = val
        msg = AIMessage(content=info["content"], tool_calls=info["tool_calls"],
                        invalid_tool_calls=info["invalid_tool_calls"], usage_metadata=info["usage"],
                        response_metadata=info["response_metadata"])
        return ChatResult(generations=[ChatGeneration(
            message=msg, generation_info={"finish_reason": info["response_metadata"]["finish_reason"]})])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        # BaseChatModel.stream() and the invoke path fire on_llm_new_token for every chunk: not done here.
        for kind, val in self._run(messages, stop, kwargs):
            if kind == "text":
                yield ChatGenerationChunk(message=AIMessageChunk(content=val))
                continue
            chunks = [{"type": "tool_call_chunk", "name": c["name"], "args": json.dumps(c["args"]), "id": c["id"],
                       "index": i} for i, c in enumerate(val["tool_calls"])]
            finish = val["response_metadata"]["finish_reason"]
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=val["rest"], tool_call_chunks=chunks, usage_metadata=val["usage"],
                                       response_metadata=val["response_metadata"], chunk_position="last"),
                generation_info={"finish_reason": finish})

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self._inject_thread(None, kwargs)
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        """Runs the whole sync stream in one worker thread (the session lock is taken and released there)
        and hands chunks to the event loop; the loop is never blocked. Leaving early cancels the turn (the
        session rolls back)."""
        self._inject_thread(None, kwargs)
        async for chunk in aiter_in_thread(lambda: self._stream(messages, stop, None, **kwargs)):
            yield chunk
