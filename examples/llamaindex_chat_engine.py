"""δ-mem vs LlamaIndex memories in a LlamaIndex chat engine and a FunctionAgent, side by side.

    python examples/llamaindex_chat_engine.py --quick                 # all three memories, short script
    python examples/llamaindex_chat_engine.py --memory deltamem       # one memory, the long script
    python examples/llamaindex_chat_engine.py --engine condense       # CondensePlusContextChatEngine

A scripted conversation plants a few facts, then many filler turns push them out of the visible window
(all memories get the same token budget). Then a chat engine is asked about the facts, and a FunctionAgent
must call a tool with an argument only the early conversation contains. Memories:
- deltamem: `DeltaMemMemory` -- the facts live on in the δ-state after they leave the window;
- buffer:   LlamaIndex `Memory` as a token-limited FIFO (same weights, no δ-mem, same budget);
- rag:      `Memory` + `VectorMemoryBlock` over faiss with offline MiniLM embeddings (same weights/budget).
Latency: δ-mem keeps the session's KV cache between turns (a turn costs its new tokens); the baselines
hand the LLM a fresh prompt each turn, as LlamaIndex memories do, so it is prefilled again.
Everything runs offline on the default backbone (SmolLM2-135M-Instruct). Without a trained δ-mem adapter
(``deltamem_agents/adapters/``), "deltamem" runs the same window without δ-state -- the script says so.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

try:
    import llama_index_deltamem  # noqa: F401
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integrations"))

FACTS = [
    ("My sister is called Daphne.", "Nice to meet Daphne's sibling!"),
    ("I parked the car on level 3 of the garage.", "Got it, level 3."),
    ("My locker code is 4512.", "I'll remember 4512."),
]
FILLER_TOPICS = ["the weather", "a good book", "breakfast", "a film I saw", "my commute", "gardening", "music",
                 "a museum visit", "cooking pasta", "a long walk", "the news", "a board game", "coffee", "the sea",
                 "mountains", "a birthday", "painting", "the train", "a podcast", "tea"]
QUESTIONS = ["What is my sister called?", "On which level did I park?", "What is my locker code?"]
AGENT_QUESTION = "How much do I owe for parking on the level where I parked?"


def parking_fee(level: int) -> str:
    """Return the parking fee for a garage level."""
    return f"Parking on level {level} costs {2 * level + 1} euros."


def script(n_filler: int) -> list[tuple[str, str]]:
    filler = [(f"Here is a little about {FILLER_TOPICS[i % len(FILLER_TOPICS)]}: I enjoyed it and would happily "
               f"do it again some day (note {i}).", "That sounds lovely.") for i in range(n_filler)]
    return FACTS + filler


def build(kind: str, llm, embed, session: str, tools):
    from llama_index_deltamem import DeltaMemMemory, baseline_llm, buffer_memory, rag_memory

    if kind == "deltamem":  # the runtime's window policy already counts the tool descriptions
        return llm, DeltaMemMemory.from_defaults(llm=llm, session_id=session)
    base = baseline_llm(llm)  # same weights and window budget, no δ-mem, the prompt is what Memory returns
    if kind == "buffer":
        return base, buffer_memory(base, session, tools=tools)
    return base, rag_memory(base, session, embed_model=embed, tools=tools)


def run_one(kind: str, llm, embed, args) -> dict:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.chat_engine import CondensePlusContextChatEngine, SimpleChatEngine
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool

    tools = [FunctionTool.from_defaults(parking_fee)]
    llm_k, memory = build(kind, llm, embed, f"demo-{kind}-{int(time.time())}", tools)
    t0 = time.perf_counter()
    for user, assistant in script(args.filler):  # the scripted past, written turn by turn
        memory.put_messages([ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=assistant)])
    setup = time.perf_counter() - t0
    system = "You are a helpful assistant. Answer briefly."
    if args.engine == "condense":
        from llama_index.core import Document, VectorStoreIndex

        index = VectorStoreIndex.from_documents([Document(text="The garage charges by level.")], embed_model=embed)
        engine = CondensePlusContextChatEngine.from_defaults(index.as_retriever(similarity_top_k=1), llm=llm_k,
                                                             memory=memory, system_prompt=system)
    else:
        engine = SimpleChatEngine.from_defaults(llm=llm_k, memory=memory, system_prompt=system)
    rows = []
    for q in QUESTIONS:
        t = time.perf_counter()
        answer = engine.chat(q).response
        rows.append((q, answer.strip().replace("\n", " "), time.perf_counter() - t))

    agent = FunctionAgent(tools=tools, llm=llm_k, system_prompt=system,
                          initial_tool_choice="parking_fee")

    async def ask_agent():
        return await agent.run(AGENT_QUESTION, memory=memory, max_iterations=3, early_stopping_method="generate")

    t = time.perf_counter()
    out = asyncio.run(ask_agent())
    calls = ", ".join(f"{c.tool_name}({c.tool_kwargs})" for c in out.tool_calls) or "no tool call"
    rows.append((AGENT_QUESTION, f"[{calls}] {str(out).strip()}", time.perf_counter() - t))
    shown, total = len(memory.get()), len(memory.get_all())
    return {"rows": rows, "setup": setup, "window": f"{shown}/{total} messages shown"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", choices=["deltamem", "buffer", "rag", "all"], default="all")
    p.add_argument("--engine", choices=["simple", "condense"], default="simple")
    p.add_argument("--quick", action="store_true", help="short script, small window, short answers")
    p.add_argument("--filler", type=int, help="filler turns between the facts and the questions")
    p.add_argument("--budget", type=int, help="window budget in tokens (same for every memory)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--adapter", default="default", help='δ-mem adapter dir, "default" (shipped) or "none"')
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    args.filler = args.filler if args.filler is not None else (6 if args.quick else 30)
    budget = args.budget or (512 if args.quick else 1024)
    max_new = args.max_new_tokens or (48 if args.quick else 64)  # room for a whole <tool_call> block

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from deltamem_agents.chat.model import DeltaMemChat
    from deltamem_agents.runtime.store import MemoryBackend, SessionStore
    from deltamem_agents.runtime.window import WindowPolicy

    from llama_index_deltamem import DeltaMemLLM, configure_settings

    kinds = ["deltamem", "buffer", "rag"] if args.memory == "all" else [args.memory]
    t = time.perf_counter()
    chat = DeltaMemChat.from_default(adapter=args.adapter, store=SessionStore(MemoryBackend()),
                                     policy=WindowPolicy(budget=budget, reserve=min(128, budget // 4)))
    llm = DeltaMemLLM(chat, max_new_tokens=max_new)
    embed = None
    if "rag" in kinds or args.engine == "condense":
        from llama_index_deltamem import local_embedding

        embed = local_embedding()
    configure_settings(llm=llm, embed_model=embed)  # explicit local defaults; nothing can reach OpenAI
    print(f"loaded in {time.perf_counter() - t:.1f}s; window budget {budget} tokens; "
          f"{len(script(args.filler))} scripted turns")
    if chat.adapter is None:
        print("note: no δ-mem adapter is loaded, so 'deltamem' is the same window without δ-state "
              "(train one, or pass --adapter DIR)")
    results = {}
    for kind in kinds:
        results[kind] = run_one(kind, llm, embed, args)
        print(f"  {kind}: scripted history written in {results[kind]['setup']:.1f}s, {results[kind]['window']}")

    width = max(24, 100 // len(kinds))
    print()
    for i, q in enumerate(QUESTIONS + [AGENT_QUESTION]):
        print(f"Q: {q}")
        for kind in kinds:
            _, answer, secs = results[kind]["rows"][i]
            print(f"  {kind:<9}{secs:6.1f}s  {' '.join(answer.split())[:width * 2]}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
