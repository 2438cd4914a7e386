"""Nothing falls back to OpenAI: unset LlamaIndex defaults fail clearly, explicit local settings work."""

from __future__ import annotations

import asyncio
import sys

import pytest


def _openai_modules() -> set[str]:
    return {m for m in sys.modules if m.startswith("llama_index.llms.openai") or m == "openai"}


@pytest.fixture(autouse=True)
def _openai_before():
    """The OpenAI modules already imported (other libraries may import the `openai` SDK on their own)."""
    return _openai_modules()


def _no_openai_loaded(before: set[str]) -> None:
    """Nothing in the test imported OpenAI's SDK or LlamaIndex's OpenAI LLM."""
    assert _openai_modules() <= before, sorted(_openai_modules() - before)


def test_guards_make_engines_without_llm_fail_clearly(_openai_before):
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.memory import Memory
    from llama_index.core.settings import Settings

    from llama_index_deltamem import LocalModelRequiredError, install_guards

    install_guards()
    with pytest.raises(LocalModelRequiredError, match="DeltaMemLLM"):
        SimpleChatEngine.from_defaults()  # needs llm.metadata to size its default memory
    engine = SimpleChatEngine.from_defaults(memory=Memory.from_defaults(token_limit=100))  # constructs ...
    with pytest.raises(LocalModelRequiredError):
        engine._llm.chat([])  # ... but cannot be used
    agent = FunctionAgent(tools=[])

    async def run() -> None:
        await agent.run("hi")

    with pytest.raises(LocalModelRequiredError):
        asyncio.run(run())
    with pytest.raises(LocalModelRequiredError, match="local_embedding"):
        Settings.embed_model.get_text_embedding("x")
    _no_openai_loaded(_openai_before)


def test_guards_never_replace_a_model_the_user_set():
    from llama_index.core.llms import MockLLM
    from llama_index.core.settings import Settings

    from llama_index_deltamem import install_guards

    mine = MockLLM()
    Settings.llm = mine
    install_guards()
    assert Settings.llm is mine


@pytest.mark.slow
def test_condense_plus_context_without_llm_does_not_reach_openai(embed, _openai_before):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.chat_engine import CondensePlusContextChatEngine

    from llama_index_deltamem import LocalModelRequiredError, install_guards

    install_guards()
    index = VectorStoreIndex.from_documents([Document(text="The office opens at 9.")], embed_model=embed)
    with pytest.raises(LocalModelRequiredError):
        CondensePlusContextChatEngine.from_defaults(index.as_retriever())
    with pytest.raises(LocalModelRequiredError, match="embed"):
        VectorStoreIndex.from_documents([Document(text="no embedding model given")])
    _no_openai_loaded(_openai_before)


@pytest.mark.slow
def test_creating_the_llm_installs_guards_and_configure_sets_local_defaults(llm, embed, _openai_before):
    from llama_index.core.chat_engine import SimpleChatEngine
    from llama_index.core.settings import Settings

    from llama_index_deltamem import DeltaMemMemory, LocalModelRequiredError, configure_settings
    from llama_index_deltamem.settings import MissingEmbedding, MissingLLM

    assert isinstance(Settings._llm, MissingLLM) and isinstance(Settings._embed_model, MissingEmbedding)
    with pytest.raises(LocalModelRequiredError):
        SimpleChatEngine.from_defaults()
    configure_settings(llm=llm, embed_model=embed)
    assert Settings.llm is llm and Settings.embed_model is embed
    assert Settings.tokenizer("hello world") == llm.client.tokenizer.encode("hello world", add_special_tokens=False)
    engine = SimpleChatEngine.from_defaults()  # now resolves to the local model
    assert engine._llm is llm
    engine = SimpleChatEngine.from_defaults(memory_cls=DeltaMemMemory)  # the memory finds the configured LLM
    assert isinstance(engine._memory, DeltaMemMemory) and engine._memory.session_id == llm.session_id
    _no_openai_loaded(_openai_before)


def test_memory_without_an_llm_fails_clearly():
    from llama_index_deltamem import DeltaMemMemory

    with pytest.raises(ValueError, match="DeltaMemLLM"):
        DeltaMemMemory.from_defaults()
