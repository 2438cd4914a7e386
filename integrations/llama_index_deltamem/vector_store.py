"""`FaissTextVectorStore`: a faiss vector store that also keeps the node texts (``stores_text=True``).

LlamaIndex's `VectorMemoryBlock` refuses stores that do not keep text, and both `SimpleVectorStore` and
`llama-index-vector-stores-faiss` keep only vectors (an index's docstore holds the text). This store keeps
an exact inner-product faiss index (``IndexIDMap2(IndexFlatIP)``; with normalised embeddings that is cosine
similarity) plus the serialised nodes, supports metadata filters (EQ / NE / IN / NIN, AND / OR -- enough for
the ``session_id`` filter that scopes a memory block to one session), deletion by ``ref_doc_id``, and
persists to a directory (``index.faiss`` + ``nodes.json``, both written atomically; no pickle).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode

from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                  MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                  VectorStoreQueryResult)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from deltamem_agents.runtime.store import write_atomic as _write_atomic

__all__ = ["FaissTextVectorStore"]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("faiss is not installed; run `pip install 'deltamem-agents[rag]'`") from exc
    return faiss


def _match(meta: Dict[str, Any], filters: Optional[MetadataFilters]) -> bool:
    if filters is None or not filters.filters:
        return True
    results = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            results.append(_match(meta, f))
            continue
        assert isinstance(f, MetadataFilter)
        value, op = meta.get(f.key), f.operator
        if op == FilterOperator.EQ:
            results.append(value == f.value)
        elif op == FilterOperator.NE:
            results.append(value != f.value)
        elif op == FilterOperator.IN:
            results.append(value in (f.value or []))
        elif op == FilterOperator.NIN:
            results.append(value not in (f.value or []))
        else:
            raise NotImplementedError(f"FaissTextVectorStore does not support filter operator {op}")
    if filters.condition == FilterCondition.OR:
        return any(results)
    if filters.condition == FilterCondition.NOT:
        return not any(results)
    return all(results)


class FaissTextVectorStore(BasePydanticVectorStore):
    """Exact faiss search over nodes whose text and metadata are kept alongside (persistable)."""

    stores_text: bool = True
    flat_metadata: bool = False
    dim: int
    persist_dir: Optional[str] = None

    _index: Any = PrivateAttr()
    _nodes: Dict[int, Dict[str, Any]] = PrivateAttr(default_factory=dict)  # faiss id -> node dict
    _next_id: int = PrivateAttr(default=0)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, dim: int, persist_dir: Optional[str | os.PathLike] = None, **kwargs: Any) -> None:
        super().__init__(dim=dim, persist_dir=None if persist_dir is None else str(persist_dir), **kwargs)
        faiss = _faiss()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self.persist_dir is not None and (Path(self.persist_dir) / "nodes.json").is_file():
            self._load(Path(self.persist_dir))

    @classmethod
    def class_name(cls) -> str:
        return "FaissTextVectorStore"

    @property
    def client(self) -> Any:
        return self._index

    def __len__(self) -> int:
        return len(self._nodes)

    # --- persistence ---------------------------------------------------------------------------------------
    def _load(self, root: Path) -> None:
        faiss = _faiss()
        doc = json.loads((root / "nodes.json").read_text("utf-8"))
        if doc.get("dim") != self.dim:
            raise ValueError(f"{root}: stored vectors have dim {doc.get('dim')}, this store expects {self.dim}")
        self._index = faiss.read_index(str(root / "index.faiss"))
        self._nodes = {int(k): v for k, v in doc["nodes"].items()}
        self._next_id = int(doc["next_id"])

    def persist(self, persist_path: Optional[str] = None, fs: Any = None) -> None:
        """Write the index and the nodes to ``persist_path`` (a directory; default ``persist_dir``)."""
        target = persist_path or self.persist_dir
        if target is None:
            return
        faiss = _faiss()
        root = Path(target)
        root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            index_bytes = faiss.serialize_index(self._index).tobytes()
            doc = {"format": "deltamem-faiss-text-store", "version": 1, "dim": self.dim, "next_id": self._next_id,
                   "nodes": {str(k): v for k, v in self._nodes.items()}}
            _write_atomic(root / "index.faiss", index_bytes)
            _write_atomic(root / "nodes.json", json.dumps(doc).encode("utf-8"))

    # --- writes --------------------------------------------------------------------------------------------
    def add(self, nodes: List[BaseNode], **add_kwargs: Any) -> List[str]:
        if not nodes:
            return []
        vectors = np.asarray([n.get_embedding() for n in nodes], dtype="float32")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"embeddings must have dim {self.dim}, got shape {vectors.shape}")
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + len(nodes), dtype="int64")
            self._index.add_with_ids(vectors, ids)
            for i, node in zip(ids.tolist(), nodes):
                self._nodes[i] = node_to_metadata_dict(node, remove_text=False, flat_metadata=False)
            self._next_id += len(nodes)
            self.persist()
        return [n.node_id for n in nodes]

    def _remove(self, ids: List[int]) -> None:
        if ids:
            self._index.remove_ids(np.asarray(ids, dtype="int64"))
            for i in ids:
                self._nodes.pop(i, None)
            self.persist()

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        with self._lock:
            self._remove([i for i, d in self._nodes.items()
                          if metadata_dict_to_node(d).ref_doc_id == ref_doc_id])

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        with self._lock:
            wanted = set(node_ids or [])
            drop = []
            for i, d in self._nodes.items():
                node = metadata_dict_to_node(d)
                if (not node_ids or node.node_id in wanted) and _match(node.metadata, filters):
                    drop.append(i)
            self._remove(drop)

    def clear(self) -> None:
        with self._lock:
            self._index.reset()
            self._nodes.clear()
            self.persist()

    def get_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                  **kwargs: Any) -> List[BaseNode]:
        with self._lock:
            nodes = [metadata_dict_to_node(d) for d in self._nodes.values()]
        wanted = set(node_ids or [])
        return [n for n in nodes if (not node_ids or n.node_id in wanted) and _match(n.metadata, filters)]

    # --- search --------------------------------------------------------------------------------------------
    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_embedding is None:
            raise ValueError("FaissTextVectorStore needs a query embedding")
        faiss = _faiss()
        with self._lock:
            candidates = [i for i, d in self._nodes.items()
                          if _match(metadata_dict_to_node(d).metadata, query.filters)]
            k = min(query.similarity_top_k, len(candidates))
            if k == 0:
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
            q = np.asarray([query.query_embedding], dtype="float32")
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(np.asarray(candidates, dtype="int64"))
            scores, ids = self._index.search(q, k, params=params)
            hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
            nodes = [metadata_dict_to_node(self._nodes[i]) for i, _ in hits]
        return VectorStoreQueryResult(nodes=nodes, similarities=[s for _, s in hits],
                                      ids=[n.node_id for n in nodes])
