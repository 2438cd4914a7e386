"""`DeltaMemLLM`: a LlamaIndex `FunctionCallingLLM` on a local backbone with a persistent δ-memory per session.

    from llama_index_deltamem import DeltaMemLLM, DeltaMemMemory
    llm = DeltaMemLLM.from_default()                       # offline SmolLM2-135M-Instruct (+ shipped adapter)
    memory = DeltaMemMemory.from_defaults(llm=llm, session_id="alice")
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)

Sessions. A call answers in one session: the ``session_id`` keyword of the call, else the session the
messages come from (messages handed out by a `DeltaMemMemory` are tagged with it), else the LLM's own
``session_id`` (``llm.for_session(id)`` gives a copy bound to another one; weights and sessions are
shared). A call whose messages continue the session (they repeat the end of its log -- the visible window
a `DeltaMemMemory` returns, or the whole history -- and add user/tool messages) is the session's next
turn: the new messages and the reply are written into its δ-state and log, exactly once. Any other call
is a *side call*: it runs on a throw-away copy of the session's δ-state (so it still reads the memory)
and writes nothing -- `complete()` always is one (condense prompts, refine steps, summaries, retries).
Plain LlamaIndex calls that pass no memory (a query engine's answer, ``structured_predict``) look like
turns too and are written into the LLM's session; for prompts that should consult the memory without
adding to it use ``read_only=True`` (every call a side call; ``llm.model_copy(update={"read_only": True})``).
``stateless=True`` makes every call a side call on an empty state: the prompt is exactly the messages
given, which is what the LlamaIndex-memory baselines (`baselines.py`) use.

Tool calling goes through the shared machinery (`chat_with_tools`, `get_tool_calls_from_response`,
`predict_and_call`, `FunctionAgent`): tools are described in the system prompt, calls are
``ToolCallBlock``s, and ``tool_required=True`` / ``tool_choice="required"|<name>`` constrain decoding
to a schema-valid call (xgrammar). Usage is in ``raw["usage"]`` and ``additional_kwargs``.

Async methods run the model in a worker thread (a whole stream in one thread, fed to the event loop
through a queue: `deltamem_agents.chat.aiter_in_thread`), so they never block the loop. Turns on one session
are serialised by the session's turn lock; forward passes on one loaded model by its model lock.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                               CompletionResponse, CompletionResponseAsyncGen,
                                               CompletionResponseGen, LLMMetadata, MessageRole, TextBlock,
                                               ToolCallBlock)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from deltamem_agents.chat import StreamHoldback, aiter_in_thread, parse_tool_calls, validate_session_id

from ._convert import continues_session, split_messages, tool_arguments

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

    from deltamem_agents.chat.model import ChatChunk, DeltaMemChat

__all__ = ["DeltaMemLLM"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


@dataclass
class _Call:
    session_id: Optional[str] = None
    side: bool = False


class DeltaMemLLM(FunctionCallingLLM):
    """LlamaIndex function-calling chat LLM over a :class:`deltamem_agents.chat.model.DeltaMemChat`."""

    session_id: str = Field(default="default", description="Session used when neither the call nor its "
                                                             "messages name one.")
    max_new_tokens: int = Field(default=256, gt=0, description="Default reply length limit (num_output).")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: Optional[int] = Field(default=None)
    stop: List[str] = Field(default_factory=list, description="Stop sequences.")
    stateless: bool = Field(default=False, description="Every call on a fresh, empty, discarded session "
                                                       "(the prompt is exactly the messages given).")
    read_only: bool = Field(default=False, description="Every call is a side call: it reads the session's "
                                                       "δ-state and writes nothing.")

    _client: Any = PrivateAttr()

    def __init__(self, client: Optional["DeltaMemChat"] = None, *, guard_settings: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if client is None:
            from deltamem_agents.chat import DeltaMemChat

            client = DeltaMemChat.from_default()
        self._client = client
        validate_session_id(self.session_id)
        if guard_settings:
            from .settings import install_guards

            install_guards()

    @classmethod
    def from_default(cls, *, model: Union[str, Path, None] = None, adapter: Union[str, Path, None] = "default",
                     store: Any = None, policy: Any = None,
                     use_memory: bool = True, db: Union[str, Path, None] = None, in_memory: bool = False,
                     budget: Optional[int] = None, reserve: Optional[int] = None, **kwargs: Any) -> "DeltaMemLLM":
        """A backbone (`model`: a local Hugging Face model dir; default the offline SmolLM2-135M-Instruct) with an
        adapter (default: the shipped one, if any); weights are loaded once per process.

        Sessions live in `store`, or the SQLite file `db`, or this process only (``in_memory=True``), else in
        the default database; the window is `policy` or ``budget``/``reserve`` tokens."""
        from deltamem_agents.chat import DeltaMemChat

        chat_kw = {k: v for k, v in (("store", store), ("policy", policy), ("db", db), ("budget", budget),
                                     ("reserve", reserve)) if v is not None}
        client = DeltaMemChat.from_pretrained(model, adapter=adapter, use_memory=use_memory, in_memory=in_memory,
                                              **chat_kw)
        return cls(client, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "DeltaMemLLM"

    # --- properties -------------------------------------------------------------------------------------
    @property
    def client(self) -> "DeltaMemChat":
        """The underlying framework-free chat model (sessions, history, fork, delete, export)."""
        return self._client

    @property
    def tokenizer_fn(self) -> Callable[[str], List[int]]:
        """The backbone tokenizer as a LlamaIndex tokenizer function (for Settings.tokenizer, Memory)."""
        tok = self._client.tokenizer
        return lambda text: tok.encode(text, add_special_tokens=False)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self._client.policy.budget, num_output=self.max_new_tokens,
                           is_chat_model=True, is_function_calling_model=True,
                           model_name=self._client.model_name, system_role=MessageRole.SYSTEM)

    def for_session(self, session_id: str) -> "DeltaMemLLM":
        """A copy bound to another session (same weights, store and settings)."""
        if session_id == self.session_id:
            return self
        validate_session_id(session_id)
        copy = self.model_copy(update={"session_id": session_id})
        copy._client = self._client
        return copy

    # --- the core: one call as a stream of chat-model chunks ------------------------------------------
    def _options(self, kw: Dict[str, Any]) -> tuple[Dict[str, Any], Optional[str]]:
        max_new = kw.pop("max_new_tokens", None) or kw.pop("max_tokens", None) or self.max_new_tokens
        opts: Dict[str, Any] = {
            "max_new_tokens": int(max_new),
            "temperature": float(kw.pop("temperature", self.temperature)),
            "top_p": float(kw.pop("top_p", self.top_p)),
            "top_k": int(kw.pop("top_k", self.top_k)),
            "seed": kw.pop("seed", self.seed),
            "stop": list(kw.pop("stop", None) or self.stop),
        }
        tools = kw.pop("tools", None)
        if tools:
            opts["tools"] = list(tools)
            opts["tool_choice"] = kw.pop("tool_choice", None) or "auto"
        else:
            kw.pop("tool_choice", None)
        session_id = kw.pop("session_id", None)
        if kw:
            logger.debug("DeltaMemLLM ignores keyword arguments %s", sorted(kw))
        return opts, session_id

    def _chunks(self, messages: Sequence[ChatMessage], kw: Dict[str, Any], call: _Call,
                side: bool = False) -> Iterator["ChatChunk"]:
        opts, session_kw = self._options(dict(kw))
        system, msgs, tag = split_messages(messages)
        if session_kw and tag and session_kw != tag:
            raise ValueError(f"session_id={session_kw!r} but the messages come from session {tag!r}")
        sid = session_kw or tag or self.session_id
        chat = self._client
        if self.stateless:
            call.side = True
            yield from chat.side_stream(msgs, system=system, **opts)
            return
        call.session_id = sid
        with chat.lock(sid):
            log = chat.history(sid)
            if not (side or self.read_only) and continues_session(log, msgs, strict=tag is not None):
                yield from chat.stream(msgs, session_id=sid, system=system, **opts)
                return
        call.side = True  # reads the session's δ-state as committed, writes nothing
        yield from chat.side_stream(msgs, session_id=sid, system=system, **opts)

    def _responses(self, messages: Sequence[ChatMessage], kw: Dict[str, Any],
                   side: bool = False) -> Iterator[ChatResponse]:
        """Incremental ChatResponses (cumulative content + delta), then the final one with usage."""
        call = _Call()
        hold = StreamHoldback(list(kw.get("stop") or self.stop), tools=True)
        last = None
        for chunk in self._chunks(messages, kw, call, side):
            if chunk.finish_reason is not None:
                last = chunk
            if chunk.text:
                delta = hold.push(chunk.text)
                if delta:
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=hold.emitted),
                                       delta=delta, raw={})
        yield self._final(hold, last, call)

    def _final(self, hold: StreamHoldback, last: Optional["ChatChunk"], call: _Call) -> ChatResponse:
        calls = list(last.tool_calls) if last is not None else []
        if last is not None and last.message is not None:
            content = last.message.get("content") or ""  # the reply's content as the session logged it
        else:
            content = parse_tool_calls(hold.text)[0] if calls else hold.text
        blocks: List[Any] = [TextBlock(text=content)] if content else []
        blocks += [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=c["args"]) for c in calls]
        usage = dict(last.usage or {}) if last is not None else {}
        raw = {"usage": usage, "finish_reason": last.finish_reason if last is not None else None,
               "model": self._client.model_name, "session_id": None if call.side else call.session_id,
               "side_call": call.side, "tool_calls": calls}
        delta = "" if calls else hold.rest(content)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks), delta=delta,
                            raw=raw, additional_kwargs=dict(usage))

    def _chat_impl(self, messages: Sequence[ChatMessage], side: bool = False, **kwargs: Any) -> ChatResponse:
        last = None
        for last in self._responses(messages, kwargs, side):
            pass
        assert last is not None
        return last.model_copy(update={"delta": None})

    def _fit_prompt(self, prompt: str, max_new_tokens: int) -> str:
        """Keep the end of a completion prompt that would not fit the window budget (with a warning)."""
        chat = self._client
        tok = chat.tokenizer
        ids = tok.encode(prompt, add_special_tokens=False)
        system = len(tok.encode(chat.system_prompt, add_special_tokens=False)) + 16  # + template tokens
        limit = chat.policy.budget - min(max_new_tokens, chat.policy.reserve) - system - 16
        if len(ids) <= limit:
            return prompt
        logger.warning("completion prompt of %d tokens cut to its last %d to fit the window budget", len(ids), limit)
        return tok.decode(ids[-limit:], skip_special_tokens=True)

    def _completion_messages(self, prompt: str, kwargs: Dict[str, Any]) -> List[ChatMessage]:
        max_new = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens
        return [ChatMessage(role=MessageRole.USER, content=self._fit_prompt(prompt, int(max_new)))]

    def _completions(self, prompt: str, kwargs: Dict[str, Any]) -> Iterator[CompletionResponse]:
        text = ""
        for r in self._responses(self._completion_messages(prompt, kwargs), kwargs, side=True):
            text += r.delta or ""
            yield CompletionResponse(text=text, delta=r.delta, raw=r.raw, additional_kwargs=r.additional_kwargs)

    # --- LlamaIndex LLM API ------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_impl(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._responses(list(messages), kwargs)

    def _complete_impl(self, prompt: str, **kwargs: Any) -> CompletionResponse:
        r = self._chat_impl(self._completion_messages(prompt, kwargs), side=True, **kwargs)
        return CompletionResponse(text=r.message.content or "", raw=r.raw, additional_kwargs=r.additional_kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete_impl(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completions(prompt, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat_impl, list(messages), **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        msgs = list(messages)
        return aiter_in_thread(lambda: self._responses(msgs, kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete_impl, prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return aiter_in_thread(lambda: self._completions(prompt, kwargs))

    # --- tool calling ------------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence["BaseTool"],
        user_msg: Optional[Union[str, ChatMessage]] = None,
        chat_history: Optional[List[ChatMessage]] = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        out: Dict[str, Any] = {"messages": messages, **kwargs}
        if specs:
            out["tools"] = specs
            out["tool_choice"] = "required" if tool_required and tool_choice in (None, "auto") else (
                tool_choice or "auto")
        return out

    def _validate_chat_with_tools_response(self, response: ChatResponse, tools: Sequence["BaseTool"],
                                           allow_parallel_tool_calls: bool = False, **kwargs: Any) -> ChatResponse:
        if not allow_parallel_tool_calls:  # keep the first call only
            seen = False
            blocks = []
            for b in response.message.blocks:
                if isinstance(b, ToolCallBlock):
                    if seen:
                        continue
                    seen = True
                blocks.append(b)
            response.message.blocks = blocks
        return response

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> List[ToolSelection]:
        calls = [ToolSelection(tool_id=b.tool_call_id or b.tool_name, tool_name=b.tool_name,
                               tool_kwargs=tool_arguments(b.tool_kwargs))
                 for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none (reply: {response.message.content!r:.200})")
        return calls
