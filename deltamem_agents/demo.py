"""The README's demo: a short built-in multi-session scenario through four memories side by side.

Two users each tell the assistant a few personal facts, in the same words but with different values, chat about
other things until the facts have left the visible window, then (in a later "session", same memory) ask about
them. Every column uses the same frozen backbone, the same session runtime and the same visible-token budget B:

  buffer        the runtime's window of recent messages only (what fits in B)
  RAG           a window of B − B/3 plus the top-3 evicted messages retrieved by MiniLM + FAISS (≤ B/3 tokens)
  δ-mem         the window of B plus the session's δ-state (every message written once, in order)
  δ-mem + RAG   both

Printed: each answer, whether it contains the user's own value (✓) or the other user's (✗ other), the δ-state's
size and the wall time. The two users' turns run from two threads and each column decodes them together in one
batch (runtime/batched.py; batched turns give the tokens of turns decoded alone, as its tests check). The columns
share only the frozen weights (each has its own sessions, KV caches and δ-states; a δ-mem call's context is per
thread), so they run as two parallel streams of one plain and one δ-mem column each, one torch thread per stream,
instead of all waiting on the model lock. The two users' conversations differ only in their values, so a memory that
answers from priors or from the wording gives both users the same answer: only answers that follow each user's own
values count as remembered. A column counts as memory only where it beats the buffer; docs/results.md has the
controlled measurements. The shipped adapter was trained on colour / food / sport / drink facts only; the
sister's name is an untrained kind, shown as such.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .datasets.answers import contains_answer
from .runtime.render import DEFAULT_SYSTEM_PROMPT

FACTS = [  # (statement with {}, question, kind the shipped adapter was trained on?)
    ("My favourite colour is {}.", "What is my favourite colour?", True),
    ("My favourite food is {}.", "What is my favourite food?", True),
    ("My sister is called {}.", "What is my sister called?", False),
]
USERS = {"ana": ("teal", "ramen", "Daphne"), "bram": ("maroon", "paella", "Ingrid")}
CHITCHAT = [
    "What's a good way to start the morning?", "Can you recommend a board game for four people?",
    "How long should I boil an egg?", "What's the tallest mountain in Europe?",
    "Give me a tip for learning a new language.", "Why is the sky blue?",
]
RAG_K = 3
BATCH_WAIT_MS = 5000.0  # a column's batch waits for both users' turns (they always come), whatever the load


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


def _turns(pool: ThreadPoolExecutor, cols: list[Column], texts: dict[str, str], max_new_tokens: int
           ) -> dict[tuple[str, str], Any]:
    """One turn per (column, user) at once: {(column name, user): reply}. Retrieval runs first, in this thread."""
    systems = {(c.name, sid): c.system_for(sid, t) for c in cols for sid, t in texts.items()}
    futures = {(c.name, sid): pool.submit(c.bot.chat, t, session_id=sid, system=systems[c.name, sid],
                                          max_new_tokens=max_new_tokens) for c in cols for sid, t in texts.items()}
    return {k: f.result() for k, f in futures.items()}


def _retriever() -> Any:
    try:
        from .retrieval import MiniLMRetriever

        r = MiniLMRetriever()
        r.embed(["warm-up"])
        return r
    except Exception as exc:  # the rag extra is optional for the library, not for `make demo`
        print(f"! RAG columns skipped: {exc}")
        return None


def _streams(cols: list[Column]) -> None:
    """Give the columns' batchers one lock per stream (column i in stream i mod n) instead of the model lock.

    Each stream runs one forward at a time on one torch thread, so n streams use n cores without oversubscribing
    them. Every column still decodes the same batches (both users' turns, see BATCH_WAIT_MS), and a forward's
    numbers do not depend on what runs beside it, so the replies are those of the columns run one after another
    (on the default backbone also the same as at torch's default thread count)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(2, len(cols), cpus))
    locks = [threading.RLock() for _ in range(n)]
    for i, c in enumerate(cols):
        if c.bot.batcher is not None:
            c.bot.batcher.lock = locks[i % n]


def run_demo(adapter: str = "default", budget: int = 192, max_new_tokens: int = 24) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallelism comes from the columns' streams (see `_streams`)
    try:
        _run(adapter, budget, max_new_tokens)
    finally:
        torch.set_num_threads(threads)


def _run(adapter: str, budget: int, max_new_tokens: int) -> None:
    from .chat.model import DeltaMemChat
    from .runtime.store import MemoryBackend, SessionStore
    from .runtime.window import WindowPolicy

    t0 = time.perf_counter()
    policy = WindowPolicy(budget=budget, reserve=48)
    rag_tokens = budget // 3
    rag_policy = WindowPolicy(budget=budget - rag_tokens, reserve=48)
    batch = dict(max_batch=len(USERS), batch_wait_ms=BATCH_WAIT_MS)  # a column's users' turns decode together
    new = lambda model, tok, pol, mem: DeltaMemChat(model, tok, store=SessionStore(MemoryBackend()),  # noqa: E731
                                                    policy=pol, use_memory=mem, **batch)
    mem = DeltaMemChat.from_default(adapter=adapter, store=SessionStore(MemoryBackend()), policy=policy, **batch)
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
    _streams(cols)
    print(f"loaded the default backbone + adapter in {time.perf_counter() - t0:.1f} s; visible budget {budget} "
          f"tokens for every column (RAG: {budget - rag_tokens} window + {rag_tokens} retrieved)")
    print("\n-- first visit: each user shares facts (same words, own values), then chats about other things --")
    pool = ThreadPoolExecutor(max_workers=len(cols) * len(USERS))
    scripts = {sid: [f.format(v) for (f, _, _), v in zip(FACTS, values)] + CHITCHAT for sid, values in USERS.items()}
    for i in range(len(FACTS) + len(CHITCHAT)):
        _turns(pool, cols, {sid: lines[i] for sid, lines in scripts.items()}, max_new_tokens)
    conv = mem._conversation(next(iter(USERS)))
    print(f"{len(conv.messages)} messages per user; δ-mem's visible window now starts at message {conv.window_start} "
          f"(the facts were messages 0, 2 and 4)")
    print("\n-- second visit: each user asks about their facts --")
    print("| user | question | gold | " + " | ".join(f"{c.name} answer | ok" for c in cols) + " |")
    print("|---|---|---|" + "---|---|" * len(cols))
    score = {(c.name, trained): 0 for c in cols for trained in (True, False)}
    answers = [_turns(pool, cols, {sid: q for sid in USERS}, max_new_tokens) for _, q, _ in FACTS]
    pool.shutdown()
    for c in cols:
        c.bot.close()
    for sid, values in USERS.items():
        others = [v for u, vs in USERS.items() if u != sid for v in vs]
        for (_, q, trained), gold, got in zip(FACTS, values, answers):
            cells = []
            for c in cols:
                text = got[c.name, sid].text
                ok = contains_answer(text, [gold])
                mark = "✓" if ok else "✗ other" if any(contains_answer(text, [o]) for o in others) else "✗"
                score[c.name, trained] += ok
                cells.append(f"{text.replace(chr(10), ' ').replace('|', '/')[:48]} | {mark}")
            print(f"| {sid} | {q}{'' if trained else ' (untrained kind)'} | {gold} | " + " | ".join(cells) + " |")
    n_tr = sum(t for _, _, t in FACTS) * len(USERS)
    n_un = len(FACTS) * len(USERS) - n_tr
    print("\ncorrect (trained kinds / untrained kind): " + ", ".join(
        f"{c.name} {score[c.name, True]}/{n_tr} · {score[c.name, False]}/{n_un}" for c in cols))
    for sid in USERS:
        st = mem.state(sid)
        if st is not None:
            print(f"δ-state of {sid}: {st.nbytes() / 1024:.1f} KiB for {len(conv.messages)} messages; "
                  "norm per layer: " + " ".join(f"{x:.2f}" for x in st.norms().tolist()[:6]) + " …")
    print(f"demo wall time {time.perf_counter() - t0:.0f} s (loading included)")
