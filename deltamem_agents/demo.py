"""The README's demo: a short built-in multi-session scenario, δ-mem vs the same window without memory.

A user tells the assistant a few personal facts, chats about other things until the facts have left the
visible window, then (in a later "session", same memory) asks about them. Both backends use the same
backbone, the same runtime and the same window budget; only the δ-state differs. Printed: each answer,
whether it contains the gold value, latency, and the δ-state's size and per-layer norms.
"""

from __future__ import annotations

import time

from .bench.probe import contains_answer

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


def run_demo(adapter: str = "default", budget: int = 192, max_new_tokens: int = 24) -> None:
    import torch

    from .chat.model import DeltaMemChat
    from .runtime.store import MemoryBackend, SessionStore
    from .runtime.window import WindowPolicy

    torch.set_num_threads(max(1, torch.get_num_threads()))
    policy = WindowPolicy(budget=budget, reserve=48)
    t0 = time.perf_counter()
    mem = DeltaMemChat.from_default(adapter=adapter, store=SessionStore(MemoryBackend()), policy=policy)
    label = "δ-mem"
    if mem.adapter is None and adapter != "none":
        from .core.config import ssw
        from .patching import attach

        torch.manual_seed(0)
        attach(mem.model, ssw(beta_bias_init=-3.0))
        mem = DeltaMemChat(mem.model, mem.tokenizer, store=SessionStore(MemoryBackend()), policy=policy)
        label = "δ-mem*"
        print("! no trained δ-mem adapter is shipped yet (see docs/results.md): δ-mem* below is an UNTRAINED "
              "adapter, so its answers show the mechanics (state, persistence, window), not memory")
    base = DeltaMemChat(mem.model, mem.tokenizer, store=SessionStore(MemoryBackend()), policy=policy,
                        use_memory=False)
    print(f"loaded the default backbone + adapter in {time.perf_counter() - t0:.1f} s; window budget {budget} tokens")
    bots = {label: mem, "window only": base}
    sid = "demo-user"
    print("\n-- session 1: the user shares facts, then chats about other things --")
    for fact, _, _ in FACTS:
        for name, bot in bots.items():
            bot.chat(fact, session_id=sid, max_new_tokens=max_new_tokens)
    for q in CHITCHAT:
        for bot in bots.values():
            bot.chat(q, session_id=sid, max_new_tokens=max_new_tokens)
    conv = mem._conversation(sid)
    print(f"{len(conv.messages)} messages so far; the visible window now starts at message {conv.window_start} "
          f"(the facts were messages 0, 2 and 4)")
    print("\n-- session 2: questions about the facts --")
    rows = []
    for _, q, gold in FACTS:
        row = [q, gold]
        for name, bot in bots.items():
            t = time.perf_counter()
            r = bot.chat(q, session_id=sid, max_new_tokens=max_new_tokens)
            row += [r.text.replace("\n", " ")[:60], contains_answer(r.text, [gold]), time.perf_counter() - t]
        rows.append(row)
    print(f"| question | gold | {label} answer | ok | s | window-only answer | ok | s |")
    print("|---|---|---|---|---|---|---|---|")
    for q, gold, a1, ok1, s1, a2, ok2, s2 in rows:
        print(f"| {q} | {gold} | {a1} | {'✓' if ok1 else '✗'} | {s1:.1f} | {a2} | {'✓' if ok2 else '✗'} | {s2:.1f} |")
    score = lambda k: sum(r[k] for r in rows)  # noqa: E731
    print(f"\ncorrect: {label} {score(3)}/{len(rows)}, window only {score(6)}/{len(rows)}")
    st = mem.state(sid)
    if st is not None:
        print(f"δ-state: {st.nbytes() / 1024:.1f} KiB for {len(conv.messages)} messages; "
              "norm per layer: " + " ".join(f"{x:.2f}" for x in st.norms().tolist()))
