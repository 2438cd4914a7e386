"""Baseline memories made of LangChain parts, with the same backbone and visible-token budget as δ-mem.

Both are `create_agent` middleware (they rewrite the messages of each model call) and can be used alone
through :meth:`select` / :meth:`as_runnable`:

* :class:`BufferMemory` -- the most recent messages that fit the budget (`langchain_core.messages.trim_messages`,
  counted with the backbone's own tokenizer and chat template, starting on a human message);
* :class:`RAGMemory` -- a shorter recent buffer plus the top-k earlier messages retrieved by similarity to the
  latest user message from a FAISS index of every message seen under the same key (``thread_id`` by default,
  or e.g. ``user_id`` to recall across threads), embedded offline with all-MiniLM-L6-v2.

Pair them with ``ChatDeltaMem(use_memory=False)`` (same weights, no δ-mem, no state) for a fair comparison:

    base = ChatDeltaMem(use_memory=False, window_budget=1024)
    agent = create_agent(base, tools, middleware=[BufferMemory(base)], checkpointer=InMemorySaver())

The budget (default: the model's ``window_budget - window_reserve``) covers the system prompt, the tool
descriptions, the retrieved context and the recent messages, like δ-mem's visible window does.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Awaitable, Callable, Sequence

from langchain.agents.middleware import AgentMiddleware
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage, trim_messages
from langchain_core.runnables import Runnable, RunnableLambda, ensure_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.vectorstores import VectorStore

from ._convert import content_text
from .chat_models import ChatDeltaMem

__all__ = ["BufferMemory", "RAGMemory"]


def _system_tokens(model: ChatDeltaMem, system: str | None, tools: Sequence[Any] | None) -> int:
    text = system if system is not None else model.chat.system_prompt
    if tools:
        from deltamem_agents.chat import tools_system_text

        text += "\n\n" + tools_system_text([t if isinstance(t, dict) else convert_to_openai_tool(t) for t in tools])
    return len(model.get_token_ids(text)) + 4  # + the template's system header/footer


class BufferMemory(AgentMiddleware):
    """Keep the most recent messages that fit ``max_tokens`` (a conversation buffer)."""

    def __init__(self, model: ChatDeltaMem, *, max_tokens: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.max_tokens = max_tokens

    @property
    def name(self) -> str:
        return "BufferMemory"

    def budget(self, system: str | None = None, tools: Sequence[Any] | None = None) -> int:
        """Tokens left for messages: the visible budget minus the system prompt and tool descriptions."""
        total = self.max_tokens if self.max_tokens is not None else self.model.window_budget - self.model.window_reserve
        return max(total - _system_tokens(self.model, system, tools), 0)

    def trim(self, messages: Sequence[BaseMessage], max_tokens: int) -> list[BaseMessage]:
        msgs = [m for m in messages if not isinstance(m, SystemMessage)]
        kept = trim_messages(msgs, max_tokens=max_tokens, token_counter=self.model, strategy="last",
                             start_on="human", allow_partial=False)
        if not kept and msgs:  # the current turn alone is over budget: keep it from its last user message
            last_h = max((i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)), default=len(msgs) - 1)
            kept = msgs[last_h:]
        return kept

    def select(self, messages: Sequence[BaseMessage], *, tools: Sequence[Any] | None = None) -> list[BaseMessage]:
        """System messages (kept) + the most recent messages that fit the budget."""
        systems = [m for m in messages if isinstance(m, SystemMessage)]
        system = "\n\n".join(content_text(m.content) for m in systems) if systems else None
        return systems + self.trim(messages, self.budget(system, tools))

    def as_runnable(self) -> Runnable[Sequence[BaseMessage], list[BaseMessage]]:
        """``memory.as_runnable() | model``: trims the message list given to the model."""
        return RunnableLambda(lambda msgs: self.select(msgs), name="BufferMemory")

    def _request(self, request: Any) -> Any:
        return request.override(messages=self.trim(request.messages,
                                                   self.budget(request.system_prompt, request.tools)))

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(self._request(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await handler(self._request(request))


def _doc_text(m: BaseMessage) -> str | None:
    text = content_text(m.content).strip()
    if not text or isinstance(m, (SystemMessage, ToolMessage)):
        return None
    if isinstance(m, HumanMessage):
        return f"User: {text}"
    if isinstance(m, AIMessage):
        return f"Assistant: {text}"
    return None


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class RAGMemory(AgentMiddleware):
    """A recent buffer plus earlier messages retrieved from a vector store (per key)."""

    def __init__(self, model: ChatDeltaMem, *, embeddings: Embeddings | None = None, k: int = 3,
                 max_tokens: int | None = None, retrieval_tokens: int | None = None, key: str = "thread_id",
                 vectorstore_factory: Callable[[Embeddings], VectorStore] | None = None) -> None:
        super().__init__()
        from .retrieval import FaissVectorStore, MiniLMEmbeddings

        self.model = model
        self.embeddings = embeddings or MiniLMEmbeddings()
        self.k = k
        self.buffer = BufferMemory(model, max_tokens=max_tokens)
        self.retrieval_tokens = retrieval_tokens
        self.key = key
        self.factory = vectorstore_factory or FaissVectorStore
        self.stores: dict[str, VectorStore] = {}
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "RAGMemory"

    def store(self, key: str) -> VectorStore:
        with self._lock:
            if key not in self.stores:
                self.stores[key] = self.factory(self.embeddings)
                self._seen[key] = set()
            return self.stores[key]

    def remember(self, messages: Sequence[BaseMessage], key: str = "default") -> int:
        """Index the user/assistant messages not indexed yet under `key`; returns how many were added."""
        store = self.store(key)
        texts = []
        with self._lock:
            seen = self._seen[key]
            for m in messages:
                t = _doc_text(m)
                if t is not None and _digest(t) not in seen:
                    seen.add(_digest(t))
                    texts.append(t)
        if texts:
            store.add_texts(texts, [{"key": key} for _ in texts])
        return len(texts)

    def forget(self, key: str) -> None:
        with self._lock:
            self.stores.pop(key, None)
            self._seen.pop(key, None)

    def _context(self, messages: Sequence[BaseMessage], key: str, system: str | None, tools: Sequence[Any] | None
                 ) -> tuple[list[BaseMessage], str | None]:
        total = self.buffer.budget(system, tools)
        share = self.retrieval_tokens if self.retrieval_tokens is not None else total // 3
        recent = self.buffer.trim(messages, max(total - share, 0))
        self.remember(messages, key)
        query = next((content_text(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        if not query.strip():
            return recent, None
        visible = {_digest(t) for t in map(_doc_text, recent) if t}
        hits = self.store(key).similarity_search(query, k=self.k + len(visible))
        lines: list[str] = []
        used = self.model.get_num_tokens("Relevant earlier conversation:\n")
        for d in hits:
            if _digest(d.page_content) in visible:
                continue
            cost = len(self.model.get_token_ids("- " + d.page_content + "\n"))
            if used + cost > share:
                continue
            lines.append("- " + d.page_content)
            used += cost
            if len(lines) >= self.k:
                break
        return recent, ("Relevant earlier conversation:\n" + "\n".join(lines)) if lines else None

    def select(self, messages: Sequence[BaseMessage], *, key: str = "default",
               tools: Sequence[Any] | None = None) -> list[BaseMessage]:
        """System messages + a system message with the retrieved context (if any) + the recent messages."""
        systems = [m for m in messages if isinstance(m, SystemMessage)]
        system = "\n\n".join(content_text(m.content) for m in systems) if systems else None
        recent, context = self._context(messages, key, system, tools)
        return systems + ([SystemMessage(content=context)] if context else []) + recent

    def as_runnable(self, key: str | None = None) -> Runnable[Sequence[BaseMessage], list[BaseMessage]]:
        """``memory.as_runnable() | model``; the key comes from `key` or ``config["configurable"][self.key]``."""
        def run(msgs: Sequence[BaseMessage]) -> list[BaseMessage]:
            return self.select(msgs, key=key or self._config_key())

        return RunnableLambda(run, name="RAGMemory")

    def _config_key(self) -> str:
        return str((ensure_config().get("configurable") or {}).get(self.key, "default"))

    def _request(self, request: Any) -> Any:
        base = request.system_prompt
        recent, context = self._context(request.messages, self._config_key(), base, request.tools)
        if context is None:
            return request.override(messages=recent)
        text = (base + "\n\n" + context) if base else context
        return request.override(messages=recent, system_message=SystemMessage(content=text))

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(self._request(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        import asyncio

        return await handler(await asyncio.to_thread(self._request, request))
