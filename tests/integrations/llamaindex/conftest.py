"""Fixtures for the LlamaIndex integration: the real default backbone (weights loaded once per process),
a fresh in-memory session store per test, offline MiniLM embeddings, and a clean `Settings` per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core", reason="needs the [llamaindex] extra")

try:
    import llama_index_deltamem  # noqa: F401
except ImportError:  # not installed (editable installs made before it existed): use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "integrations"))

MAX_NEW = 12  # short replies keep the suite fast on a 1-thread CPU
TOOL_MAX_NEW = 40  # a Hermes <tool_call> block with JSON arguments is ~30-38 tokens for this tokenizer


@pytest.fixture(autouse=True)
def clean_settings():
    """Each test starts with unset LlamaIndex defaults and leaves them as it found them."""
    import llama_index.core
    from llama_index.core.settings import Settings

    saved = (Settings._llm, Settings._embed_model, llama_index.core.global_tokenizer)
    Settings._llm = Settings._embed_model = None
    yield
    Settings._llm, Settings._embed_model, llama_index.core.global_tokenizer = saved


def make_chat(store=None, policy=None):
    """A DeltaMemChat on the default backbone (shipped adapter if there is one), weights shared per process."""
    from deltamem_agents.chat.model import DeltaMemChat
    from deltamem_agents.runtime.store import MemoryBackend, SessionStore

    kw = {"policy": policy} if policy is not None else {}
    return DeltaMemChat.from_default(store=store or SessionStore(MemoryBackend()), **kw)


@pytest.fixture
def llm():
    from llama_index_deltamem import DeltaMemLLM

    return DeltaMemLLM(make_chat(), max_new_tokens=MAX_NEW, session_id="t-default")


@pytest.fixture(scope="session")
def embed():
    from llama_index_deltamem import local_embedding

    return local_embedding()


def memory_for(kind: str, llm, session_id: str, embed=None, token_limit=None):
    """(llm, memory) for one memory kind: δ-mem on `llm`, or a LlamaIndex baseline on the same weights."""
    from llama_index_deltamem import DeltaMemMemory, baseline_llm, buffer_memory, rag_memory

    if kind == "deltamem":
        return llm, DeltaMemMemory.from_defaults(llm=llm, session_id=session_id)
    base = baseline_llm(llm)
    if kind == "buffer":
        return base, buffer_memory(base, session_id, token_limit=token_limit)
    return base, rag_memory(base, session_id, embed_model=embed, token_limit=token_limit)


def roles(messages) -> list[str]:
    return [m.role.value if hasattr(m, "role") else m["role"] for m in messages]
