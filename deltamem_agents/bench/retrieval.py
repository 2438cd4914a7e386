"""The benchmark's RAG retriever: `deltamem_agents.retrieval.MiniLMRetriever` (one retrieval module for every
RAG baseline)."""

from ..retrieval import MiniLMRetriever

__all__ = ["MiniLMRetriever"]
