"""No silent OpenAI: explicit local `Settings`, and guards that fail clearly where LlamaIndex would default.

LlamaIndex resolves an unset ``Settings.llm`` / ``Settings.embed_model`` to OpenAI (or, with ``IS_TESTING``
set, to mock models). Chat engines, agents, memory blocks and indexes fall back to them whenever no model
is passed. :func:`install_guards` puts placeholders into the *unset* slots that raise
:class:`LocalModelRequiredError` with what to pass instead; it never replaces a model the user set.
Creating a :class:`~llama_index_deltamem.llm.DeltaMemLLM` installs them (``guard_settings=False`` opts out).
:func:`configure_settings` sets the local LLM, embedding model and tokenizer explicitly.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, CompletionResponse, CompletionResponseGen,
                                               LLMMetadata)
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.settings import Settings

__all__ = ["LocalModelRequiredError", "MissingLLM", "MissingEmbedding", "install_guards", "configure_settings"]

_LOCK = threading.Lock()


class LocalModelRequiredError(RuntimeError):
    """A LlamaIndex component fell back to a default model; deltamem never defaults to a remote one."""


_LLM_HINT = ("no LLM was given to this LlamaIndex component, and Settings.llm is unset (LlamaIndex would fall "
             "back to OpenAI). Pass llm=DeltaMemLLM(...) to the engine/agent (or memory.llm), or call "
             "llama_index_deltamem.configure_settings(llm=...).")
_EMBED_HINT = ("no embedding model was given to this LlamaIndex component, and Settings.embed_model is unset "
               "(LlamaIndex would fall back to OpenAI). Pass embed_model=llama_index_deltamem.local_embedding() "
               "(offline all-MiniLM-L6-v2), or call llama_index_deltamem.configure_settings(embed_model=...).")


class MissingLLM(CustomLLM):
    """Stands in for an unset ``Settings.llm``: any use raises :class:`LocalModelRequiredError`."""

    @classmethod
    def class_name(cls) -> str:
        return "DeltaMemMissingLLM"

    @property
    def metadata(self) -> LLMMetadata:
        raise LocalModelRequiredError(_LLM_HINT)

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        raise LocalModelRequiredError(_LLM_HINT)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise LocalModelRequiredError(_LLM_HINT)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise LocalModelRequiredError(_LLM_HINT)


class MissingEmbedding(BaseEmbedding):
    """Stands in for an unset ``Settings.embed_model``: any use raises :class:`LocalModelRequiredError`."""

    model_name: str = "deltamem-missing-embedding"

    @classmethod
    def class_name(cls) -> str:
        return "DeltaMemMissingEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        raise LocalModelRequiredError(_EMBED_HINT)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        raise LocalModelRequiredError(_EMBED_HINT)

    def _get_text_embedding(self, text: str) -> list[float]:
        raise LocalModelRequiredError(_EMBED_HINT)


def install_guards() -> None:
    """Fill the unset ``Settings.llm`` / ``Settings.embed_model`` with placeholders that raise clearly."""
    with _LOCK:
        if Settings._llm is None:
            Settings.llm = MissingLLM()
        if Settings._embed_model is None:
            Settings.embed_model = MissingEmbedding()


def configure_settings(llm: Any = None, embed_model: Any = None, *, tokenizer: bool = True) -> None:
    """Use local models for LlamaIndex defaults: ``Settings.llm = llm``, ``Settings.embed_model = embed_model``
    and (with ``tokenizer=True`` and a DeltaMemLLM) ``Settings.tokenizer`` = the backbone's tokenizer, so
    token counts are the model's own. Whatever is not given is guarded (see :func:`install_guards`)."""
    if llm is not None:
        Settings.llm = llm
        tok = getattr(llm, "tokenizer_fn", None)
        if tokenizer and tok is not None:
            Settings.tokenizer = tok
    if embed_model is not None:
        Settings.embed_model = embed_model
    install_guards()
