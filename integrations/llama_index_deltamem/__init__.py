"""LlamaIndex integration of deltamem-agents.

- :class:`DeltaMemLLM` -- a `FunctionCallingLLM` on a local backbone with a persistent δ-memory per session
  (chat / stream / complete, non-blocking async, tool calling with constrained decoding, usage counts);
- :class:`DeltaMemMemory` -- LlamaIndex's `BaseMemory` over one δ-mem session, for `SimpleChatEngine`,
  `CondensePlusContextChatEngine`, `FunctionAgent` and `AgentWorkflow` (``memory=``);
- baselines from LlamaIndex parts on the same weights and budget: :func:`baseline_llm`,
  :func:`buffer_memory`, :func:`rag_memory` (:class:`FaissTextVectorStore`, :func:`local_embedding` /
  :class:`MiniLMEmbedding`, faces of `deltamem_agents.retrieval`);
- :func:`configure_settings` / :func:`install_guards` -- nothing falls back to OpenAI.

Needs ``pip install "deltamem-agents[llamaindex]"`` (and ``[rag]`` for the RAG baseline). Importing this
package is cheap; LlamaIndex, torch and the weights load on first use of a class.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DeltaMemLLM", "DeltaMemMemory", "baseline_llm", "buffer_memory", "rag_memory", "local_embedding",
           "MiniLMEmbedding", "history_token_limit", "FaissTextVectorStore", "configure_settings", "install_guards",
           "LocalModelRequiredError"]

_LAZY = {"DeltaMemLLM": ".llm", "DeltaMemMemory": ".memory", "baseline_llm": ".baselines",
         "buffer_memory": ".baselines", "rag_memory": ".baselines", "local_embedding": ".embeddings",
         "MiniLMEmbedding": ".embeddings", "history_token_limit": ".baselines", "FaissTextVectorStore": ".vector_store",
         "configure_settings": ".settings", "install_guards": ".settings", "LocalModelRequiredError": ".settings"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name], __name__)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] == "llama_index":
            raise ImportError(f"{exc.name} is not installed; run `pip install 'deltamem-agents[llamaindex]'`") from exc
        raise
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(__all__)
