"""Chat engines and agents run multi-turn conversations with δ-mem and with the LlamaIndex baselines.

For δ-mem the session log must hold every message exactly once (the LLM writes the turn, the memory does
not write it again); for the baselines the LlamaIndex memory holds the conversation and the RAG block must
really have received (embedded) flushed messages.
"""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.llms import ChatMessage

from .conftest import memory_for, roles

pytestmark = pytest.mark.slow

KINDS = ["deltamem", "buffer", "rag"]
SMALL = 24  # baseline token limit: small, so the buffer drops and the RAG block embeds within two turns


AGENT_MAX_NEW = 32  # a forced call of a tool without arguments is ~25 tokens


def secret_word() -> str:
    """Return today's secret word."""
    return "banana"


def _check_after(kind, llm, memory, expected_roles):
    """The memory holds the whole conversation; δ-mem's log has each message once; RAG embedded the overflow."""
    assert roles(memory.get_all()) == expected_roles
    if kind == "deltamem":
        assert roles(llm.client.history(memory.session_id)) == expected_roles
    if kind == "rag":
        assert len(memory.memory_blocks[0].vector_store) >= 1
    if kind == "buffer":
        assert len(memory.get()) < len(expected_roles)  # the token limit dropped the oldest messages


@pytest.fixture(scope="module")
def retriever(embed):
    from llama_index.core import Document, VectorStoreIndex

    docs = [Document(text="The office opens at 9 am and closes at 5 pm."),
            Document(text="The cafeteria serves pasta on Fridays.")]
    return VectorStoreIndex.from_documents(docs, embed_model=embed).as_retriever(similarity_top_k=1)


@pytest.mark.parametrize("kind", KINDS)
def test_simple_chat_engine(kind, llm, embed):
    from llama_index.core.chat_engine import SimpleChatEngine

    llm, memory = memory_for(kind, llm, f"simple-{kind}", embed, SMALL)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="You are a helpful assistant.")
    first = engine.chat("My favourite colour is green.")
    assert first.response.strip()
    stream = engine.stream_chat("What is my favourite colour?")
    tokens = list(stream.response_gen)  # joins the thread that writes the reply to memory
    assert len([t for t in tokens if t]) >= 2  # incremental
    _check_after(kind, llm, memory, ["user", "assistant"] * 2)


@pytest.mark.parametrize("kind", KINDS)
def test_condense_plus_context_chat_engine(kind, llm, embed, retriever):
    from llama_index.core.chat_engine import CondensePlusContextChatEngine

    llm, memory = memory_for(kind, llm, f"cpc-{kind}", embed, SMALL)
    engine = CondensePlusContextChatEngine.from_defaults(retriever, llm=llm, memory=memory)
    condensed: list[str] = []
    cond = engine._acondense_question

    async def record(*args, **kwargs):  # the standalone question the engine retrieves with
        condensed.append(await cond(*args, **kwargs))
        return condensed[-1]

    engine._acondense_question = record
    r1 = engine.chat("Hi, I am Alice.")
    r2 = asyncio.run(engine.achat("When does the office open?"))  # condenses (a side call) then answers
    assert r1.response.strip() and r2.response.strip() and len(condensed) == 1 and condensed[0].strip()
    # the context is what the retriever returns for the condensed question (a 135M model's condensation is
    # poor: "Hi Alice," / "Chat History:" were measured, so which document that is is not asserted)
    assert [n.node_id for n in r2.source_nodes] == [n.node_id for n in retriever.retrieve(condensed[0])]
    _check_after(kind, llm, memory, ["user", "assistant"] * 2)


@pytest.mark.parametrize("kind", KINDS)
def test_function_agent(kind, llm, embed):
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    llm = llm.for_session(f"agent-{kind}")
    llm.max_new_tokens = AGENT_MAX_NEW
    llm, memory = memory_for(kind, llm, f"agent-{kind}", embed, SMALL)
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(secret_word)], llm=llm, initial_tool_choice="secret_word",
                          system_prompt="You are a helpful assistant.")

    async def conversation():
        for q in ("What is the secret word?", "What is the secret word?"):  # a 2nd run on the same memory
            out = await agent.run(q, memory=memory, max_iterations=3, early_stopping_method="generate")
            assert out.tool_calls[0].tool_name == "secret_word" and out.tool_calls[0].tool_output.content == "banana"
            assert out.response.content  # the model answered after reading the tool result

    asyncio.run(conversation())
    all_roles = roles(memory.get_all())
    assert all_roles[:3] == ["user", "assistant", "tool"] and all_roles.count("user") == 2
    assert all_roles[-1] == "assistant"
    _check_after(kind, llm, memory, all_roles)


@pytest.mark.parametrize("kind", KINDS)
def test_agent_workflow(kind, llm, embed):
    from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
    from llama_index.core.tools import FunctionTool

    llm = llm.for_session(f"wf-{kind}")
    llm.max_new_tokens = AGENT_MAX_NEW
    llm, memory = memory_for(kind, llm, f"wf-{kind}", embed, SMALL)
    tool = FunctionTool.from_defaults(secret_word, return_direct=True)  # the tool's result is the answer
    agent = FunctionAgent(name="helper", description="Knows the secret word.", tools=[tool], llm=llm,
                          initial_tool_choice="secret_word", system_prompt="You are a helpful assistant.")
    workflow = AgentWorkflow(agents=[agent], root_agent="helper")

    async def conversation():
        for q in ("What is the secret word?", "And what is it today?"):
            out = await workflow.run(user_msg=q, memory=memory, max_iterations=3)
            assert str(out) == "banana"

    asyncio.run(conversation())
    # the model wrote user + tool call; the memory wrote the tool result and the direct answer
    _check_after(kind, llm, memory, ["user", "assistant", "tool", "assistant"] * 2)


def test_chat_history_kwarg_and_messages_from_memory_route_to_their_session(llm):
    """One LLM serves two memories: each engine's turn lands in its own session."""
    from llama_index.core.chat_engine import SimpleChatEngine

    from llama_index_deltamem import DeltaMemMemory

    a = DeltaMemMemory.from_defaults(llm=llm, session_id="route-a")
    b = DeltaMemMemory.from_defaults(llm=llm, session_id="route-b")
    SimpleChatEngine.from_defaults(llm=llm, memory=a).chat("I live in Paris.")
    SimpleChatEngine.from_defaults(llm=llm, memory=b).chat("I live in Rome.",
                                                           chat_history=[ChatMessage(role="user", content="Hi"),
                                                                         ChatMessage(role="assistant", content="Hello")])
    assert [m["content"] for m in llm.client.history("route-a")][:1] == ["I live in Paris."]
    assert [m["content"] for m in llm.client.history("route-b")][:3] == ["Hi", "Hello", "I live in Rome."]
    assert llm.client.history(llm.session_id) == []
