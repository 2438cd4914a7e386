"""LangChain `ChatOpenAI` and LlamaIndex `OpenAILike` pointed at the real server keep one δ-memory per session."""

from __future__ import annotations

import pytest
import torch

FACT = "My locker code is 4417."
QUESTION = "What is my locker code?"


def _check(server, reference, sid: str, replies: list[str]) -> None:
    """The session holds the fact and equals the same turns run in process; other sessions are untouched."""
    log = server.chat.history(sid)
    assert [m["role"] for m in log] == ["user", "assistant"] * 2 and log[0]["content"] == FACT
    r1 = reference.chat(FACT, session_id=sid, max_new_tokens=4)
    r2 = reference.chat(QUESTION, session_id=sid, max_new_tokens=4)
    assert replies == [r1.text, r2.text]
    torch.testing.assert_close(server.chat.state(sid).S, reference.state(sid).S, rtol=1e-5, atol=1e-6)


def test_langchain_chat_openai(server, reference):
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="deltamem", temperature=0, max_tokens=4,
                     max_retries=0, extra_body={"session_id": "lc"})
    a = llm.invoke([HumanMessage(FACT)])
    # the whole conversation resent, as LangChain agents do; streamed this time
    b = "".join(c.content for c in llm.stream([HumanMessage(FACT), AIMessage(a.content), HumanMessage(QUESTION)]))
    assert a.usage_metadata["output_tokens"] >= 1
    _check(server, reference, "lc", [a.content, b])
    assert server.chat.history("lc-other") == []


def test_llamaindex_openai_like(server, reference):
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model="deltamem", api_base=server.url + "/v1", api_key="unused", is_chat_model=True,
                     max_tokens=4, temperature=0, max_retries=0, default_headers={"X-Session-Id": "li"})
    a = llm.chat([ChatMessage(role="user", content=FACT)]).message.content
    b = llm.chat([ChatMessage(role="user", content=QUESTION)]).message.content  # only the new message sent
    _check(server, reference, "li", [a, b])
