"""Baselines made of LlamaIndex parts, on the same backbone and the same token budget as δ-mem.

- :func:`baseline_llm`: a `DeltaMemLLM` over the same loaded weights *without* δ-mem
  (``DeltaMemChat.on_same_weights(use_memory=False)``) and ``stateless=True``: the prompt is exactly what the LlamaIndex
  memory returns (trimmed to the same window budget if it is longer).
- :func:`buffer_memory`: LlamaIndex ``Memory`` as a token-limited FIFO, counted with the backbone's own
  tokenizer; when it overflows, the oldest messages are dropped in a chunk (like the runtime's window).
- :func:`rag_memory`: the same ``Memory`` whose overflow goes to a ``VectorMemoryBlock`` over a real vector
  store (:class:`FaissTextVectorStore`) with offline all-MiniLM-L6-v2 embeddings
  (:func:`local_embedding`; both are faces of `deltamem_agents.retrieval`, nothing is downloaded); retrieved
  messages are put into the system prompt. 70% of the budget is kept for recent messages, as LlamaIndex
  does; the retrieved text is cut to what is left (:class:`RetrievedHistoryBlock`).

Both memories persist when given ``database_path`` (SQLite via aiosqlite) and, for RAG, ``persist_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from llama_index.core.bridge.pydantic import Field
from llama_index.core.memory import Memory
from llama_index.core.memory.memory_blocks import VectorMemoryBlock

from .embeddings import local_embedding
from .llm import DeltaMemLLM
from .vector_store import FaissTextVectorStore

__all__ = ["baseline_llm", "buffer_memory", "rag_memory", "local_embedding", "history_token_limit",
           "RetrievedHistoryBlock"]


def baseline_llm(source: Union[DeltaMemLLM, Any, None] = None, **kwargs: Any) -> DeltaMemLLM:
    """A stateless `DeltaMemLLM` on the same weights and window budget as `source` (a DeltaMemLLM or
    DeltaMemChat; default: the default backbone), without δ-mem. Generation settings of a DeltaMemLLM
    source are kept unless overridden."""
    from deltamem_agents.chat import DeltaMemChat

    if isinstance(source, DeltaMemLLM):
        chat = source.client
        for name in ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"):
            kwargs.setdefault(name, getattr(source, name))
    else:
        chat = source if source is not None else DeltaMemChat.from_default()
    base = chat.on_same_weights(use_memory=False, live_sessions=2)
    kwargs["stateless"] = True
    return DeltaMemLLM(base, **kwargs)


def history_token_limit(llm: DeltaMemLLM, tools: Optional[Sequence[Any]] = None) -> int:
    """The token budget δ-mem's window has for messages: budget - reply reserve - system prompt, and minus
    the tool descriptions the LLM adds to the system prompt when `tools` (LlamaIndex tools) are given."""
    chat = llm.client
    system = chat.system_prompt
    if tools:
        from deltamem_agents.chat import tools_system_text

        system += "\n\n" + tools_system_text([t.metadata.to_openai_tool(skip_length_check=True) for t in tools])
    return max(64, chat.policy.budget - chat.policy.reserve - len(llm.tokenizer_fn(system)))


def _uri(database_path: Union[str, Path, None]) -> Optional[str]:
    if database_path is None:
        return None
    path = Path(database_path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def buffer_memory(llm: DeltaMemLLM, session_id: Optional[str] = None, *, token_limit: Optional[int] = None,
                  tools: Optional[Sequence[Any]] = None, database_path: Union[str, Path, None] = None) -> Memory:
    """LlamaIndex ``Memory`` as a token-limited buffer with the backbone's tokenizer and δ-mem's budget
    (less the prompt of `tools`, if the memory serves an agent)."""
    limit = token_limit or history_token_limit(llm, tools)
    flush = max(1, int(limit * (1.0 - llm.client.policy.low_water)))
    return Memory.from_defaults(session_id=session_id, token_limit=limit, tokenizer_fn=llm.tokenizer_fn,
                                chat_history_token_ratio=1.0, token_flush_size=flush,
                                async_database_uri=_uri(database_path))


class RetrievedHistoryBlock(VectorMemoryBlock):
    """`VectorMemoryBlock` that, when recent messages + retrieved text exceed the token limit, keeps the
    start of the retrieved text (the best hits come first) instead of dropping all of it."""

    tokenizer_fn: Callable[[str], List[Any]] = Field(exclude=True, description="Counts tokens for truncation.")

    async def atruncate(self, content: Any, tokens_to_truncate: int) -> Optional[str]:
        if not isinstance(content, str):
            return None
        target = len(self.tokenizer_fn(content)) - tokens_to_truncate
        if target < 16:
            return None
        cut = content
        while cut and len(self.tokenizer_fn(cut)) > target:
            cut = cut[: int(len(cut) * 0.9)]
        return cut or None


def rag_memory(llm: DeltaMemLLM, session_id: Optional[str] = None, *, embed_model: Any = None,
               token_limit: Optional[int] = None, tools: Optional[Sequence[Any]] = None, similarity_top_k: int = 2,
               vector_store: Optional[FaissTextVectorStore] = None, persist_dir: Union[str, Path, None] = None,
               database_path: Union[str, Path, None] = None) -> Memory:
    """LlamaIndex ``Memory`` whose overflow is embedded into a faiss store and retrieved per turn (RAG).

    The vector block filters by ``session_id``; one store can serve many sessions. Give each memory its
    own block (this function does): `VectorMemoryBlock` keeps the first session filter it sees. `Memory`'s
    token limit counts messages and retrieved text only, so pass the agent's `tools` to leave room for the
    tool descriptions the LLM adds to the system prompt."""
    embed = embed_model or local_embedding()
    if vector_store is None:
        dim = len(embed.get_text_embedding("dimension probe"))
        vector_store = FaissTextVectorStore(dim, persist_dir=persist_dir)
    block = RetrievedHistoryBlock(name="retrieved_history", vector_store=vector_store, embed_model=embed,
                                  similarity_top_k=similarity_top_k, retrieval_context_window=1,
                                  tokenizer_fn=llm.tokenizer_fn, priority=1)  # 1: may be truncated to the limit
    limit = token_limit or history_token_limit(llm, tools)
    flush = max(1, int(limit * 0.7 * (1.0 - llm.client.policy.low_water)))
    return Memory.from_defaults(session_id=session_id, token_limit=limit, tokenizer_fn=llm.tokenizer_fn,
                                chat_history_token_ratio=0.7, token_flush_size=flush, memory_blocks=[block],
                                async_database_uri=_uri(database_path))
