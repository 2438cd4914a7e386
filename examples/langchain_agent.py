"""A tool-using assistant built with `langchain.agents.create_agent`, with three kinds of memory side by side.

    python examples/langchain_agent.py --quick                       # a short script, all three memories
    python examples/langchain_agent.py --memory deltamem,rag         # the full script, two memories

The user (Maya) talks to the assistant over several sessions; every session is a new LangGraph thread, so
the graph's own history starts empty each time. What carries over depends on the memory:

* ``deltamem`` -- `ChatDeltaMem` keyed by ``user_id``: one δ-memory per user across threads, written once
  per message; the model sees its visible window plus what the δ-state holds;
* ``buffer``   -- the same backbone without δ-mem + `BufferMemory`: the recent messages of the thread that
  fit the budget (LangChain's usual short-term memory);
* ``rag``      -- the same backbone without δ-mem + `RAGMemory` keyed by ``user_id``: a shorter buffer plus
  the top-k earlier messages of any thread, retrieved with all-MiniLM-L6-v2 from FAISS.

All three use the same visible-token budget (``--budget``: system prompt + tool descriptions + messages).
Tools: notes, a calculator and a calendar. Everything runs offline on the default SmolLM2-135M-Instruct (a
135M model: expect short, sometimes wrong answers; the point is the plumbing and the latency).
"""

from __future__ import annotations

import argparse
import ast
import operator
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integrations"))  # run from a checkout too

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.errors import GraphRecursionError  # noqa: E402

from langchain_deltamem import BufferMemory, ChatDeltaMem, RAGMemory  # noqa: E402

SYSTEM = "You are Maya's personal assistant. Use a tool only when it is needed. Answer briefly."
USER = "maya"

SCRIPT = [
    ("monday", ["Hi, I'm Maya. My sister Daphne's birthday is on June 3.",
                "Put Daphne's birthday party on my calendar for June 3.",
                "What is 17 * 23?"]),
    ("tuesday", ["Add a note: buy a blue scarf for Daphne.",
                 "By the way, I adopted a cat called Miso."]),
    ("friday", ["When is my sister's birthday?",
                "What is my cat called?",
                "What did I want to buy for Daphne?"]),
]
QUICK = [
    ("monday", ["Hi, I'm Maya. My sister Daphne's birthday is on June 3."]),
    ("friday", ["When is my sister's birthday?"]),
]

# ------------------------------------------------------------------ tools (state reset per memory run)
NOTES: list[str] = []
CALENDAR: list[tuple[str, str]] = []
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if isinstance(node.op, ast.Pow) and abs(_eval(node.right)) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("only arithmetic is supported")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '17 * 23'."""
    try:
        return str(_eval(ast.parse(expression, mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"


@tool
def notes(action: str, text: str = "") -> str:
    """Keep notes. action is 'add' (store text) or 'list' (show all notes)."""
    if action == "add" and text:
        NOTES.append(text)
        return f"noted ({len(NOTES)} notes)"
    return "; ".join(NOTES) or "no notes"


@tool
def calendar(action: str, date: str = "", title: str = "") -> str:
    """Manage the calendar. action is 'add' (needs date and title) or 'list'."""
    if action == "add" and date and title:
        CALENDAR.append((date, title))
        return f"added {title!r} on {date}"
    return "; ".join(f"{d}: {t}" for d, t in CALENDAR) or "calendar is empty"


TOOLS = [notes, calculator, calendar]


# ------------------------------------------------------------------ agents
def build(memory: str, args: argparse.Namespace, db: str):
    common = {"window_budget": args.budget, "window_reserve": args.max_tokens + 8, "max_tokens": args.max_tokens}
    if memory == "deltamem":
        llm = ChatDeltaMem(session_key="user_id", db_path=db, adapter=args.adapter, **common)
        llm.forget_thread(USER)  # start from an empty memory
        if llm.chat.adapter is None:
            print("  note: no δ-mem adapter found (pass --adapter DIR); the deltamem column runs the same runtime "
                  "without δ-mem: a visible window carried across threads", flush=True)
        return create_agent(llm, TOOLS, system_prompt=SYSTEM, checkpointer=InMemorySaver())
    base = ChatDeltaMem(use_memory=False, **common)
    mw = BufferMemory(base) if memory == "buffer" else RAGMemory(base, k=3, key="user_id")
    return create_agent(base, TOOLS, system_prompt=SYSTEM, middleware=[mw], checkpointer=InMemorySaver())


def describe(new: list) -> str:
    """The assistant's final text, with the tool calls it made on the way."""
    calls = [f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['args'].items())})"
             for m in new if isinstance(m, AIMessage) for c in m.tool_calls]
    final = next((m.content for m in reversed(new) if isinstance(m, AIMessage) and m.content), "")
    text = " ".join(final.split())
    return (f"[{'; '.join(calls)}] " if calls else "") + (text or "(no text)")


def run(memory: str, script, args: argparse.Namespace, db: str) -> list[tuple[str, float]]:
    NOTES.clear()
    CALENDAR.clear()
    agent = build(memory, args, db)
    out = []
    for session, turns in script:
        cfg = {"configurable": {"thread_id": f"{memory}-{session}", "user_id": USER}, "recursion_limit": 6}
        for turn in turns:
            t0 = time.perf_counter()
            try:
                state = agent.invoke({"messages": [HumanMessage(turn)]}, cfg)
                msgs = state["messages"]
                start = max(i for i, m in enumerate(msgs) if isinstance(m, HumanMessage) and m.content == turn)
                answer = describe(msgs[start + 1:])
            except GraphRecursionError:
                answer = "(stopped: too many tool calls)"
            out.append((answer, time.perf_counter() - t0))
            print(f"  [{memory}] {session}: {turn!r} -> {answer[:80]!r} ({out[-1][1]:.1f}s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", default="deltamem,buffer,rag", help="comma list of deltamem, buffer, rag")
    ap.add_argument("--quick", action="store_true", help="a two-turn script with short answers")
    ap.add_argument("--budget", type=int, default=1024, help="visible tokens (system + tools + messages + reply)")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per model call")
    ap.add_argument("--adapter", default="default", help="δ-mem adapter: default, none or a directory")
    ap.add_argument("--db", default=None, help="δ-session SQLite file (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                    help="torch threads (0: torch's default)")
    args = ap.parse_args()
    args.max_tokens = args.max_tokens or (24 if args.quick else 48)
    memories = [m.strip() for m in args.memory.split(",") if m.strip()]
    bad = set(memories) - {"deltamem", "buffer", "rag"}
    if bad:
        ap.error(f"unknown memory {sorted(bad)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    script = QUICK if args.quick else SCRIPT
    tmp = tempfile.TemporaryDirectory()
    db = args.db or str(Path(tmp.name) / "sessions.db")

    results = {m: run(m, script, args, db) for m in memories}

    width = 38
    turns = [(s, t) for s, ts in script for t in ts]
    print("\n" + " | ".join(["session / user".ljust(28)] + [m.ljust(width) for m in memories]))
    print("-" * (31 + (width + 3) * len(memories)))
    for i, (session, turn) in enumerate(turns):
        cells = [textwrap.wrap(f"{results[m][i][0]} ({results[m][i][1]:.1f}s)", width) or [""] for m in memories]
        left = textwrap.wrap(f"{session}: {turn}", 28)
        for j in range(max(len(left), *map(len, cells))):
            row = [(left[j] if j < len(left) else "").ljust(28)]
            row += [(c[j] if j < len(c) else "").ljust(width) for c in cells]
            print(" | ".join(row))
        print("-" * (31 + (width + 3) * len(memories)))
    for m in memories:
        lat = [r[1] for r in results[m]]
        print(f"{m:>9}: mean latency {sum(lat) / len(lat):.1f}s per user turn, total {sum(lat):.1f}s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
