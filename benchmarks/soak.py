"""Long-session soak: one session, many short user turns, on the real default backbone.

Usage::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --turns 10000 --threads 1

Each turn adds one short user message with `add_messages` (written into the δ-state, committed to SQLite);
every `--reply-every` turns the turn is a `chat` reply instead (`--reply-tokens` greedy tokens). Recorded:
per-turn wall latency for every turn; every `--sample-every` turns the δ-state norm (max over layers of
`DeltaState.norms()`) and the process RSS. Rows go to `<work-dir>/soak.jsonl`; the session lives in
`<work-dir>/soak.db`, so an interrupted run resumes where it stopped (run the same command again; `--fresh`
starts over). At the end: a summary (printed, and `<work-dir>/summary.json`) and a plot (`--plot`).

The adapter is `--adapter random` by default (δ-mem attached with seeded random weights, like the tests:
no trained adapter is shipped yet and the state must really move), `init` (attach's initial weights) or an
adapter directory.

Memory diagnosis (docs/soak.md, "RSS growth: diagnosis"): every sample also records RssAnon/RssFile and glibc's
heap counters (benchmarks/memprobe.py); `--malloc-trim-every N` calls glibc `malloc_trim(0)` after every N-th
turn; `--tracemalloc 300,1500` traces Python allocations and writes the growth between the first listed turn
and each later one to `<work-dir>/tracemalloc.txt` (tracing slows the run and adds its own memory to RSS).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memprobe  # noqa: E402

SESSION = "soak"
WORDS = ("apple", "river", "candle", "violet", "copper", "meadow", "harbor", "pepper", "falcon", "marble")


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tiny_backbone() -> tuple[Any, Any]:
    """A 3-layer random Llama (hidden 64) on the real backbone's tokenizer: the same runtime, store, renderer
    and tokenizer code per turn at a fraction of the compute (for Python-level leak hunting, not for RSS)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltamem_agents.backbone import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir(None))
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=8192)
    return LlamaForCausalLM(cfg).eval(), tok


def build_bot(adapter: str, db: Path, budget: int, tiny: bool = False) -> Any:
    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.chat.model import DeltaMemChat
    from deltamem_agents.core.config import ssw
    from deltamem_agents.patching import attach
    from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
    from deltamem_agents.runtime.window import WindowPolicy

    store = SessionStore(SQLiteBackend(db))
    policy = WindowPolicy(budget=budget, reserve=64)
    if adapter not in ("random", "init") and not tiny:
        return DeltaMemChat.from_pretrained(None, adapter=adapter, store=store, policy=policy)
    model, tok = tiny_backbone() if tiny else load_backbone()
    ad = attach(model, ssw())
    if adapter == "random":  # the tests' randomize_adapter (tests/conftest.py), seed 0, scale 0.3
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in ad.named_parameters():
                if name.endswith("beta_bias"):
                    p.copy_(torch.randn(p.shape, generator=g) - 1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3 / max(1, p.shape[-1]) ** 0.5)
    return DeltaMemChat(model, tok, store=store, policy=policy)


def user_text(i: int) -> str:
    return f"Turn {i}: note that the {WORDS[i % 10]} code is {(i * 7919) % 10000}."


def sample(bot: Any) -> dict[str, float]:
    st, rec = bot.state(SESSION), bot.store.get(SESSION)
    assert rec is not None and len(rec.messages) == rec.metadata["num_messages"]
    return {"state_norm_max": float(st.norms().max()), "state_absmax": float(st.S.abs().max()), "rss_mb": rss_mb(),
            "window_start": rec.metadata["window_start"], "state_bytes": len(rec.state or b""),
            **memprobe.rss_split(), **memprobe.heap_stats()}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    adds = [r for r in rows if r["kind"] == "add"]
    lat = [r["latency_s"] for r in adds]
    w = min(1000, len(lat) // 3) or len(lat)
    samples = [r for r in rows if "state_norm_max" in r]
    last_pid = rows[-1]["pid"]
    seg = [r for r in samples if r["pid"] == last_pid]  # RSS of the last (resumed) process only
    peak = max(samples, key=lambda r: r["state_norm_max"])
    warm_turn = seg[0]["turn"] + max(100, (seg[-1]["turn"] - seg[0]["turn"]) // 10)  # window filled, evicted
    warm = next((r for r in seg if r["turn"] >= warm_turn), seg[-1])
    first, last = statistics.median(lat[:w]), statistics.median(lat[-w:])
    replies = [r["latency_s"] for r in rows if r["kind"] == "reply"]
    return {
        "turns": len(rows), "add_turns": len(adds), "reply_turns": len(replies),
        "processes": len({r["pid"] for r in rows}),
        "messages_in_log": rows[-1]["n_messages"], "window_start_end": samples[-1]["window_start"],
        "evictions_seen_in_samples": sum(b["window_start"] > a["window_start"] for a, b in zip(samples, samples[1:])),
        "state_bytes_first": samples[0]["state_bytes"], "state_bytes_last": samples[-1]["state_bytes"],
        "state_norm_max": peak["state_norm_max"], "state_norm_max_at_turn": peak["turn"],
        "state_norm_first": samples[0]["state_norm_max"], "state_norm_last": samples[-1]["state_norm_max"],
        "state_absmax_max": max(r["state_absmax"] for r in samples),
        "rss_mb_start": seg[0]["rss_mb"], "rss_mb_warm": warm["rss_mb"], "rss_warm_turn": warm["turn"],
        "rss_mb_end": seg[-1]["rss_mb"], "rss_mb_max": max(r["rss_mb"] for r in seg),
        "latency_window": w, "latency_median_first_s": first, "latency_median_last_s": last,
        "latency_ratio_last_over_first": last / first,
        "latency_p95_s": sorted(lat)[int(0.95 * (len(lat) - 1))], "latency_max_s": max(lat),
        "reply_latency_median_s": statistics.median(replies) if replies else None,
    }


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adds = [r for r in rows if r["kind"] == "add"]
    samples = [r for r in rows if "state_norm_max" in r]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot([r["turn"] for r in adds], [1e3 * r["latency_s"] for r in adds], ".", ms=2, alpha=0.4)
    k = 25  # rolling median
    med = [1e3 * statistics.median(r["latency_s"] for r in adds[max(0, i - k):i + 1]) for i in range(len(adds))]
    ax[0].plot([r["turn"] for r in adds], med, "-", lw=1.2, label=f"rolling median ({k} turns)")
    ax[0].set_ylabel("add_messages turn, ms")
    ax[0].set_yscale("log")
    ax[0].legend(loc="upper left")
    ax[1].plot([r["turn"] for r in samples], [r["state_norm_max"] for r in samples], "-")
    ax[1].set_ylabel("δ-state norm\n(max over layers)")
    ax[2].plot([r["turn"] for r in samples], [r["rss_mb"] for r in samples], "-")
    ax[2].set_ylabel("process RSS, MiB")
    ax[2].set_xlabel("turn")
    fig.suptitle(f"{title}: {summary['turns']} turns, latency ratio last/first "
                 f"{summary['latency_ratio_last_over_first']:.2f}, max state norm {summary['state_norm_max']:.3f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=10000, help="total turns (a resumed run counts those done)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--reply-every", type=int, default=100, help="every N-th turn is a chat reply (0: never)")
    ap.add_argument("--reply-tokens", type=int, default=8)
    ap.add_argument("--sample-every", type=int, default=10, help="state norm and RSS every K turns")
    ap.add_argument("--budget", type=int, default=1024, help="window budget in tokens (evictions happen)")
    ap.add_argument("--adapter", default="random", help="random | init | an adapter directory")
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama on the real tokenizer (leak hunting)")
    ap.add_argument("--work-dir", type=Path, default=None, help="default: <cache dir>/soak")
    ap.add_argument("--plot", type=Path, default=Path("docs/soak.png"))
    ap.add_argument("--fresh", action="store_true", help="delete the work dir first (no resume)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--malloc-trim-every", type=int, default=0, help="glibc malloc_trim(0) after every N-th turn")
    ap.add_argument("--tracemalloc", default="", help="turns to snapshot, e.g. 300,1500 (report: tracemalloc.txt)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from deltamem_agents.backbone import cache_dir

    work = args.work_dir or cache_dir() / "soak"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    jsonl, db = work / "soak.jsonl", work / "soak.db"
    bot = build_bot(args.adapter, db, args.budget, args.tiny)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    n_messages = len(bot.history(SESSION))
    if n_messages != (rows[-1]["n_messages"] if rows else 0):  # e.g. killed between the commit and the row
        sys.exit(f"{work}: {jsonl.name} and {db.name} disagree ({n_messages} messages in the database); "
                 "rerun with --fresh")
    done = rows[-1]["turn"] + 1 if rows else 0
    pid = os.getpid()
    trace = memprobe.TraceDiff([int(t) for t in args.tracemalloc.split(",")]) if args.tracemalloc else None
    with open(jsonl, "a") as out:
        for i in tqdm(range(done, args.turns), initial=done, total=args.turns, disable=args.no_progress,
                      desc="soak", unit="turn"):
            reply = args.reply_every and i % args.reply_every == args.reply_every - 1
            t0, c0 = time.perf_counter(), time.process_time()
            if reply:
                bot.chat(f"Turn {i}: which code did I give at turn {i - 1}?", session_id=SESSION,
                         max_new_tokens=args.reply_tokens)
            else:
                bot.add_messages([{"role": "user", "content": user_text(i)}], session_id=SESSION)
            n_messages += 2 if reply else 1
            trimmed = None
            if args.malloc_trim_every and i % args.malloc_trim_every == args.malloc_trim_every - 1:
                trimmed = memprobe.malloc_trim()
            row = {"turn": i, "kind": "reply" if reply else "add", "latency_s": time.perf_counter() - t0,
                   "cpu_s": time.process_time() - c0, "pid": pid, "n_messages": n_messages}
            if trimmed is not None:
                row["trimmed"] = trimmed
            if i % args.sample_every == 0 or i == args.turns - 1:
                row.update(sample(bot))
            if trace is not None and trace.maybe_snapshot(i):
                (work / "tracemalloc.txt").write_text(trace.report())
            out.write(json.dumps(row) + "\n")
            out.flush()
            rows.append(row)
    summary = summarize(rows)
    summary.update(threads=args.threads, adapter=args.adapter, budget=args.budget, reply_every=args.reply_every,
                   malloc_trim_every=args.malloc_trim_every, tiny=args.tiny, tracemalloc=args.tracemalloc,
                   load_average_end=os.getloadavg()[0])
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, summary, args.plot, f"δ-mem soak, adapter={args.adapter}")
    for k, v in summary.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    print(f"rows: {jsonl}  plot: {args.plot}")


if __name__ == "__main__":
    main()
