"""`FaissTextVectorStore`: a faiss vector store that also keeps the node texts (``stores_text=True``).

LlamaIndex's `VectorMemoryBlock` refuses stores that do not keep text, and both `SimpleVectorStore` and
`llama-index-vector-stores-faiss` keep only vectors (an index's docstore holds the text). This store is
LlamaIndex's face of `deltamem_agents.retrieval.TextIndex`: an exact inner-product faiss index (with
normalised embeddings that is cosine similarity) whose entries carry the serialised nodes. It supports
metadata filters (EQ / NE / IN / NIN, AND / OR / NOT -- enough for the ``session_id`` filter that scopes a
memory block to one session), deletion by ``ref_doc_id``, and persists to a directory (``index.faiss`` +
``nodes.json``, both written atomically; no pickle).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (BasePydanticVectorStore, FilterCondition, FilterOperator,
                                                  MetadataFilter, MetadataFilters, VectorStoreQuery,
                                                  VectorStoreQueryResult)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from deltamem_agents.retrieval import TextIndex

__all__ = ["FaissTextVectorStore"]


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

    _index: TextIndex = PrivateAttr()

    def __init__(self, dim: int, persist_dir: Optional[str | os.PathLike] = None, **kwargs: Any) -> None:
        super().__init__(dim=dim, persist_dir=None if persist_dir is None else str(persist_dir), **kwargs)
        if self.persist_dir is not None and TextIndex.exists(self.persist_dir):
            self._index = TextIndex.load(self.persist_dir, dim, normalize=False)
        else:
            self._index = TextIndex(dim, normalize=False)

    @classmethod
    def class_name(cls) -> str:
        return "FaissTextVectorStore"

    @property
    def client(self) -> Any:
        return self._index.faiss_index

    def __len__(self) -> int:
        return len(self._index)

    # --- persistence ---------------------------------------------------------------------------------------
    def persist(self, persist_path: Optional[str] = None, fs: Any = None) -> None:
        """Write the index and the nodes to ``persist_path`` (a directory; default ``persist_dir``)."""
        target = persist_path or self.persist_dir
        if target is not None:
            self._index.save(target)

    # --- writes --------------------------------------------------------------------------------------------
    def add(self, nodes: List[BaseNode], **add_kwargs: Any) -> List[str]:
        if not nodes:
            return []
        self._index.add([n.get_embedding() for n in nodes],
                        [node_to_metadata_dict(n, remove_text=False, flat_metadata=False) for n in nodes])
        self.persist()
        return [n.node_id for n in nodes]

    def _remove_where(self, where: Any) -> None:
        if self._index.remove_where(where):
            self.persist()

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self._remove_where(lambda d: metadata_dict_to_node(d).ref_doc_id == ref_doc_id)

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        wanted = set(node_ids or [])

        def where(d: Dict[str, Any]) -> bool:
            node = metadata_dict_to_node(d)
            return (not node_ids or node.node_id in wanted) and _match(node.metadata, filters)

        self._remove_where(where)

    def clear(self) -> None:
        self._index.clear()
        self.persist()

    def get_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                  **kwargs: Any) -> List[BaseNode]:
        nodes = [metadata_dict_to_node(d) for _i, d in self._index.items()]
        wanted = set(node_ids or [])
        return [n for n in nodes if (not node_ids or n.node_id in wanted) and _match(n.metadata, filters)]

    # --- search --------------------------------------------------------------------------------------------
    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_embedding is None:
            raise ValueError("FaissTextVectorStore needs a query embedding")
        filters = query.filters
        where = None if filters is None or not filters.filters else (
            lambda d: _match(metadata_dict_to_node(d).metadata, filters))
        hits = self._index.search(query.query_embedding, query.similarity_top_k, where)
        nodes = [metadata_dict_to_node(d) for _i, _s, d in hits]
        return VectorStoreQueryResult(nodes=nodes, similarities=[s for _i, s, _d in hits],
                                      ids=[n.node_id for n in nodes])
