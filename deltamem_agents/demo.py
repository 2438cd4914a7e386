"""The README's demo: a short built-in multi-session scenario through four memories side by side.

A user tells the assistant a few personal facts, chats about other things until the facts have left the
visible window, then (in a later "session", same memory) asks about them. Every column uses the same frozen
backbone, the same session runtime and the same visible-token budget B:

  buffer        the runtime's window of recent messages only (what fits in B)
  RAG           a window of B − B/3 plus the top-3 evicted messages retrieved by MiniLM + FAISS (≤ B/3 tokens)
  δ-mem         the window of B plus the session's δ-state (every message written once, in order)
  δ-mem + RAG   both

Printed: each answer, whether it contains the gold value, latency, and the δ-state's size. A column only
counts as memory where it beats the buffer; docs/results.md has the controlled measurements.
"""

from __future__ import annotations

import time
from typing import Any

from .bench.probe import contains_answer
from .runtime.render import DEFAULT_SYSTEM_PROMPT

FACTS = [
    ("My sister is called Daphne.", "What is my sister called?", "Daphne"),
    ("I keep my bike at locker number 417.", "What is my bike locker number?", "417"),
    ("My favourite food is ramen.", "What is my favourite food?", "ramen"),
]
CHITCHAT = [
    "What's a good way to start the morning?", "Can you recommend a board game for four people?",
    "How long should I boil an egg?", "What's the tallest mountain in Europe?",
    "Give me a tip for learning a new language.", "Why is the sky blue?",
]
RAG_K = 3


class Column:
    """One memory: a chat model, and optionally retrieval of evicted messages into the system prompt."""

    def __init__(self, name: str, bot: Any, retriever: Any = None, rag_tokens: int = 0) -> None:
        self.name, self.bot, self.retriever, self.rag_tokens = name, bot, retriever, rag_tokens

    def system_for(self, sid: str, question: str) -> str | None:
        if self.retriever is None:
            return None
        conv = self.bot._conversation(sid)
        evicted = [m for m in conv.messages[:conv.window_start] if isinstance(m.get("content"), str) and m["content"]]
        texts = [f"{m['role']}: {m['content']}" for m in evicted]
        picked, used = [], 0
        for i in self.retriever.top_k(question, texts, 4 * RAG_K):
            n = len(self.bot.tokenizer(texts[i], add_special_tokens=False)["input_ids"]) + 1
            if used + n <= self.rag_tokens and len(picked) < RAG_K:
                picked.append(i)
                used += n
        if not picked:
            return DEFAULT_SYSTEM_PROMPT
        lines = "\n".join(texts[i] for i in sorted(picked))
        return f"{DEFAULT_SYSTEM_PROMPT}\n\nRelevant earlier conversation:\n{lines}"

    def chat(self, text: str, sid: str, max_new_tokens: int) -> Any:
        return self.bot.chat(text, session_id=sid, system=self.system_for(sid, text), max_new_tokens=max_new_tokens)


def _retriever() -> Any:
    try:
        from .bench.retrieval import MiniLMRetriever

        r = MiniLMRetriever()
        r.embed(["warm-up"])
        return r
    except Exception as exc:  # the rag extra is optional for the library, not for `make demo`
        print(f"! RAG columns skipped: {exc}")
        return None


def run_demo(adapter: str = "default", budget: int = 192, max_new_tokens: int = 24) -> None:
    from .chat.model import DeltaMemChat
    from .runtime.store import MemoryBackend, SessionStore
    from .runtime.window import WindowPolicy

    t0 = time.perf_counter()
    policy = WindowPolicy(budget=budget, reserve=48)
    rag_tokens = budget // 3
    rag_policy = WindowPolicy(budget=budget - rag_tokens, reserve=48)
    new = lambda model, tok, pol, mem: DeltaMemChat(model, tok, store=SessionStore(MemoryBackend()),  # noqa: E731
                                                    policy=pol, use_memory=mem)
    mem = DeltaMemChat.from_default(adapter=adapter, store=SessionStore(MemoryBackend()), policy=policy)
    label = "δ-mem"
    if mem.adapter is None and adapter != "none":
        import torch

        from .core.config import ssw
        from .patching import attach

        torch.manual_seed(0)
        attach(mem.model, ssw(beta_bias_init=-3.0))
        mem = new(mem.model, mem.tokenizer, policy, True)
        label = "δ-mem*"
        print("! no trained δ-mem adapter is shipped yet (see docs/results.md): δ-mem* below is an UNTRAINED "
              "adapter, so its answers show the mechanics (state, persistence, window), not memory")
    cols = [Column("buffer", new(mem.model, mem.tokenizer, policy, False)), Column(label, mem)]
    retriever = _retriever()
    if retriever is not None:
        cols.insert(1, Column("RAG", new(mem.model, mem.tokenizer, rag_policy, False), retriever, rag_tokens))
        cols.append(Column(f"{label} + RAG", new(mem.model, mem.tokenizer, rag_policy, True), retriever, rag_tokens))
    print(f"loaded the default backbone + adapter in {time.perf_counter() - t0:.1f} s; visible budget {budget} "
          f"tokens for every column (RAG: {budget - rag_tokens} window + {rag_tokens} retrieved)")
    sid = "demo-user"
    print("\n-- session 1: the user shares facts, then chats about other things --")
    for text in [f for f, _, _ in FACTS] + CHITCHAT:
        for c in cols:
            c.chat(text, sid, max_new_tokens)
    conv = mem._conversation(sid)
    print(f"{len(conv.messages)} messages so far; δ-mem's visible window now starts at message {conv.window_start} "
          f"(the facts were messages 0, 2 and 4)")
    print("\n-- session 2: questions about the facts --")
    results: list[list[tuple[str, bool, float]]] = []
    for _, q, gold in FACTS:
        row = []
        for c in cols:
            t = time.perf_counter()
            r = c.chat(q, sid, max_new_tokens)
            row.append((r.text.replace("\n", " ").replace("|", "/")[:48], contains_answer(r.text, [gold]),
                        time.perf_counter() - t))
        results.append(row)
    print("| question | gold | " + " | ".join(f"{c.name} answer | ok | s" for c in cols) + " |")
    print("|---|---|" + "---|---|---|" * len(cols))
    for (_, q, gold), row in zip(FACTS, results):
        cells = " | ".join(f"{a} | {'✓' if ok else '✗'} | {s:.1f}" for a, ok, s in row)
        print(f"| {q} | {gold} | {cells} |")
    print("\ncorrect: " + ", ".join(f"{c.name} {sum(r[i][1] for r in results)}/{len(results)}"
                                    for i, c in enumerate(cols)))
    st = mem.state(sid)
    if st is not None:
        print(f"δ-state: {st.nbytes() / 1024:.1f} KiB for {len(conv.messages)} messages; "
              "norm per layer: " + " ".join(f"{x:.2f}" for x in st.norms().tolist()))
