"""LangChain faces of `deltamem_agents.retrieval` for the RAG baseline (offline: no download, ever).

`MiniLMEmbeddings` is LangChain's `Embeddings` over its all-MiniLM-L6-v2 embedder; `FaissVectorStore` is a
minimal `VectorStore` over its exact cosine-similarity FAISS index, so `langchain-community` is not needed.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from deltamem_agents.retrieval import MiniLMEmbedder, TextIndex

__all__ = ["MiniLMEmbeddings", "FaissVectorStore"]


class MiniLMEmbeddings(Embeddings):
    """Sentence embeddings (384-d, normalized) from the packaged all-MiniLM-L6-v2; loaded once per process."""

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        self.embedder = MiniLMEmbedder(model_path, device=device, batch_size=batch_size)

    @property
    def model(self) -> Any:
        return self.embedder.model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0].tolist()


def _document(payload: dict[str, Any]) -> Document:
    return Document(page_content=payload["text"], metadata=dict(payload["metadata"]), id=payload["id"])


def _where(filter: Callable[[Document], bool] | dict | None) -> Callable[[dict[str, Any]], bool] | None:
    if filter is None:
        return None
    if callable(filter):
        return lambda p: bool(filter(_document(p)))
    return lambda p: all(p["metadata"].get(key) == v for key, v in filter.items())


class FaissVectorStore(VectorStore):
    """Exact cosine-similarity search over a `deltamem_agents.retrieval.TextIndex` (vectors L2-normalized)."""

    def __init__(self, embedding: Embeddings) -> None:
        self._embedding = embedding
        self._index: TextIndex | None = None
        self._lock = threading.Lock()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        metadatas = metadatas or [{} for _ in texts]
        ids = list(ids) if ids else [uuid.uuid4().hex for _ in texts]
        vectors = self._embedding.embed_documents(texts)
        with self._lock:
            if self._index is None:
                self._index = TextIndex(len(vectors[0]))
        self._index.add(vectors, [{"text": t, "metadata": dict(md), "id": i}
                                  for t, md, i in zip(texts, metadatas, ids)])
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids or self._index is None:
            return False
        drop = set(ids)
        return bool(self._index.remove_where(lambda p: p["id"] in drop))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        want = set(ids)
        items = self._index.items() if self._index is not None else []
        return [_document(p) for _i, p in items if p["id"] in want]

    def similarity_search_with_score_by_vector(self, embedding: Sequence[float], k: int = 4,
                                               filter: Callable[[Document], bool] | dict | None = None,
                                               ) -> list[tuple[Document, float]]:
        if self._index is None:
            return []
        return [(_document(p), s) for _i, s, p in self._index.search(embedding, k, _where(filter))]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k,
                                                           filter=kwargs.get("filter"))

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=kwargs.get("filter"))]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda s: (s + 1.0) / 2.0

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> FaissVectorStore:
        store = cls(embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store
