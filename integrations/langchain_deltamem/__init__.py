"""LangChain / LangGraph integration of deltamem-agents.

- :class:`ChatDeltaMem` -- a `BaseChatModel` on a local backbone with a persistent δ-memory per thread;
- :class:`DeltaMemCheckpointer` -- wraps a LangGraph checkpointer so deleting a thread forgets its δ-memory;
- :class:`BufferMemory`, :class:`RAGMemory` -- baseline memories (`create_agent` middleware or runnables);
- :class:`MiniLMEmbeddings`, :class:`FaissVectorStore` -- offline embeddings and vector store for RAG.

The memory classes import `langchain`; the retrieval ones also `sentence-transformers` and `faiss`
(``pip install "deltamem-agents[langchain,rag]"``). They are imported on first use.
"""

from __future__ import annotations

from typing import Any

from .chat_models import ChatDeltaMem, clear_client_cache

__all__ = ["ChatDeltaMem", "DeltaMemCheckpointer", "BufferMemory", "RAGMemory", "MiniLMEmbeddings",
           "FaissVectorStore", "clear_client_cache"]

_LAZY = {"DeltaMemCheckpointer": ".checkpoint", "BufferMemory": ".memory", "RAGMemory": ".memory",
         "MiniLMEmbeddings": ".retrieval", "FaissVectorStore": ".retrieval"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
