"""Benchmark: what δ-mem costs at inference time, side by side with the plain backbone, in one run.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_speed.py --quick --out docs/bench_speed.md

All runs use the same backbone (the offline SmolLM2-135M-Instruct, fp32, CPU, one thread unless
`--threads` says otherwise), so machine noise hits every variant alike. Sections:

1. Prefill tok/s (prompts of 512 / 2048 tokens) and greedy decode tok/s (64 new tokens, EOS masked)
   of the plain backbone (no δ-mem attached), δ-mem TSW and δ-mem SSW (randomly initialised adapters:
   speed does not depend on training), all through the same `Engine` loop (state=None for plain), plus
   Hugging Face `model.generate` on the plain model as a reference. Repeats are interleaved
   (plain, TSW, SSW, HF, plain, ...) and medians are reported; overhead = δ-mem time / plain time − 1,
   from wall-clock and from process CPU time (the latter is less sensitive to other jobs on the box).
2. Per-turn latency vs history length: `DeltaMemChat` with δ-mem and `WindowPolicy(budget=1024,
   reserve=64)` vs the same runtime without memory (plain backbone, `use_memory=False`) and a budget
   that holds the whole history (no eviction). One session per backend grows through the checkpoints
   (history added with `add_messages`); at each checkpoint `chat(question, max_new_tokens=16)` is timed
   warm (KV cache of the live session reused) and, where enabled, cold (a fork of the session that is not
   live: the KV cache is rebuilt from the stored log, as after a restart or on a stateless server).
   The backbone has 8192 positions, so full history stops just under 8k; δ-mem rebuilds its window from
   position 0 after each eviction, so it continues to 16k (full run).
3. Bytes per session: the δ-state (`nbytes()`, `len(to_bytes())`) vs the KV cache of the same history
   (bytes of the key/value tensors of the full-history session's DynamicCache; beyond 8k computed
   from the measured bytes per token).
4. A plot (`docs/bench_speed.png`): per-turn latency vs history, and state vs KV bytes (log scale).

`--profile` additionally prints a cProfile of one δ-mem TSW decode (the per-token Python overhead).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import copy
import cProfile
import datetime as dt
import gc
import io
import platform
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.core.config import ssw, tsw
from deltamem_agents.datasets.synthetic import generate
from deltamem_agents.patching import attach
from deltamem_agents.runtime.decode import Engine, Generation, GenerationConfig
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.store import SessionStore
from deltamem_agents.runtime.store_memory import MemoryBackend
from deltamem_agents.runtime.window import WindowPolicy

ROOT = Path(__file__).resolve().parent.parent
MAX_POSITIONS = 8192


# --- helpers -------------------------------------------------------------------------------------------
def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    w, c = now()
    return w - t0[0], c - t0[1]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(x: float) -> str:
    return f"{x * 100:+.1f}%" if x == x else "n/a"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class NoEos:
    """A logits constraint that only masks the end-of-turn ids, so every run decodes exactly N tokens."""

    def __init__(self, eos_ids: tuple[int, ...]) -> None:
        self.eos = list(eos_ids)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[self.eos] = float("-inf")
        return logits

    def accept(self, token_id: int) -> None:
        pass

    def is_finished(self) -> bool:
        return False


class TimingStreamer:
    """HF streamer recording when each new token arrives (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


# --- filler chat history -------------------------------------------------------------------------------
def filler(renderer: ChatRenderer, n_tokens: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """User/assistant chit-chat episodes concatenated until they hold >= n_tokens, and their questions."""
    msgs: list[dict] = []
    questions: list[str] = []
    total, batch = 0, 0
    while total < n_tokens:
        for ep in generate(16, seed=seed * 1000 + batch, split="train", mix={"fact": 1.0}, distance_range=(200, 600)):
            for m in ep.messages:
                msgs.append(dict(m))
                total += len(renderer.message_ids(m))
            questions.append(ep.question)
            if total >= n_tokens:
                break
        batch += 1
    return msgs, questions


# --- section 1: prefill / decode -----------------------------------------------------------------------
@dataclass
class Timings:
    prefill: list[tuple[float, float]] = field(default_factory=list)  # (wall, cpu) seconds
    decode: list[tuple[float, float]] = field(default_factory=list)
    n_decode: int = 0


def engine_run(engine: Engine, state: Any, ids: list[int], mids: list[int], new_tokens: int,
               eos: tuple[int, ...]) -> tuple[tuple[float, float], tuple[float, float], int]:
    cur = engine.new_cursor(state)
    gc.collect()
    t0 = now()
    logits = engine.forward(cur, ids, mids)
    pre = since(t0)
    res = Generation()
    cfg = GenerationConfig(max_new_tokens=new_tokens)
    t1 = now()
    for _ in engine.decode(cur, logits, max(mids) + 1, cfg, NoEos(eos), res):
        pass
    dec = since(t1)
    assert len(res.token_ids) == new_tokens, len(res.token_ids)
    return pre, dec, len(res.token_ids)


def hf_run(model: Any, ids: list[int], new_tokens: int, eos: int) -> tuple[tuple[float, float], tuple[float, float], int]:
    x = torch.tensor([ids])
    st = TimingStreamer()
    gc.collect()
    t0 = now()
    with torch.inference_mode():
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                       streamer=st, pad_token_id=eos)
    assert len(st.times) == new_tokens, len(st.times)
    pre = (st.times[0] - t0[0], st.cpu[0] - t0[1])
    dec = (st.times[-1] - st.times[0], st.cpu[-1] - st.cpu[0])
    return pre, dec, new_tokens - 1  # tokens 2..N, one forward each


def section_speed(models: dict[str, Any], tok: Any, renderer: ChatRenderer, prompts: list[int], new_tokens: int,
                  repeats: int, hf_ref: bool) -> dict[int, dict[str, Timings]]:
    hist, _ = filler(renderer, max(prompts) + 64, seed=1)
    h_ids, h_mids = renderer.render(hist)
    sys_ids = list(renderer.system_ids)
    engines = {name: Engine(m, tok) for name, m in models.items()}
    eos = engines["plain"].eos_ids
    out: dict[int, dict[str, Timings]] = {P: {} for P in prompts}
    # warm-up (first-call allocations, lazy init) on a short prompt
    for name, eng in engines.items():
        state = None if name == "plain" else models[name].deltamem.zero_state(1)
        engine_run(eng, state, sys_ids + h_ids[:32], [-1] * len(sys_ids) + h_mids[:32], 4, eos)
    for r in range(repeats):
        for P in prompts:
            ids = sys_ids + h_ids[: P - len(sys_ids)]
            mids = [-1] * len(sys_ids) + h_mids[: P - len(sys_ids)]
            order = list(engines) + (["hf generate"] if hf_ref else [])
            for name in order:
                if name == "hf generate":
                    pre, dec, n = hf_run(models["plain"], ids, new_tokens, tok.eos_token_id)
                else:
                    state = None if name == "plain" else models[name].deltamem.zero_state(1)
                    pre, dec, n = engine_run(engines[name], state, ids, mids, new_tokens, eos)
                t = out[P].setdefault(name, Timings())
                t.prefill.append(pre)
                t.decode.append(dec)
                t.n_decode = n
                log(f"repeat {r + 1}/{repeats} P={P} {name}: prefill {P / pre[0]:.1f} tok/s, "
                    f"decode {n / dec[0]:.2f} tok/s (wall)")
    return out


def speed_tables(res: dict[int, dict[str, Timings]], new_tokens: int) -> list[str]:
    lines = []
    for P, by in res.items():
        base = by["plain"]
        bp = [med([x[i] for x in base.prefill]) for i in (0, 1)]
        bd = [med([x[i] for x in base.decode]) / base.n_decode for i in (0, 1)]
        lines += [f"**Prompt {P} tokens, then {new_tokens} greedy tokens** (medians of {len(base.prefill)} "
                  "interleaved repeats; overhead = time / plain time − 1)", "",
                  "| variant | prefill tok/s | prefill overhead (wall / CPU) | decode tok/s | decode ms/token "
                  "| decode overhead (wall / CPU) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, t in by.items():
            p = [med([x[i] for x in t.prefill]) for i in (0, 1)]
            d = [med([x[i] for x in t.decode]) / t.n_decode for i in (0, 1)]
            if name == "plain":
                po = do = "—"
            else:
                po = f"{pct(p[0] / bp[0] - 1)} / {pct(p[1] / bp[1] - 1)}"
                do = f"{pct(d[0] / bd[0] - 1)} / {pct(d[1] / bd[1] - 1)}"
            label = {"plain": "plain (Engine, no δ-mem)", "tsw": "δ-mem TSW (Engine)", "ssw": "δ-mem SSW (Engine)",
                     "hf generate": "plain, HF `generate` (reference)"}[name]
            lines.append(f"| {label} | {P / p[0]:.1f} | {po} | {1 / d[0]:.2f} | {d[0] * 1e3:.1f} | {do} |")
        lines.append("")
    lines.append("Targets: decode overhead ≤ 5%, prefill/write overhead ≤ 15%. HF `generate` prefill includes "
                 "sampling the first token; its decode rate is measured between the first and last streamed token.")
    return lines


# --- section 2 / 3: per-turn latency and bytes ---------------------------------------------------------
@dataclass
class Point:
    target: int
    backend: str
    history_tokens: int = 0
    warm: list[tuple[float, float]] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    evicted: list[bool] = field(default_factory=list)
    cold: tuple[float, float] | None = None
    cold_prompt_tokens: int = 0
    ingest_s: float = 0.0  # wall seconds of add_messages to reach this point (from the previous one)
    ingest_tokens: int = 0
    kv_bytes: int | None = None
    state_nbytes: int | None = None
    state_blob: int | None = None
    state_S_bytes: int | None = None


def kv_cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes of all key/value tensors, tokens held) of a transformers DynamicCache."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
    return total, cache.get_seq_length()


def history_tokens(chat: DeltaMemChat, renderer: ChatRenderer, sid: str) -> int:
    return len(renderer.system_ids) + sum(len(renderer.message_ids(m)) for m in chat.history(sid))


def section_turns(plain: Any, delta_model: Any, tok: Any, renderer: ChatRenderer, targets: list[int],
                  full_max: int, turns: int, cold_max: int, max_new: int) -> list[Point]:
    msgs, questions = filler(renderer, max(targets) + 256, seed=2)
    backends = {
        "δ-mem + window": DeltaMemChat(delta_model, tok, store=SessionStore(MemoryBackend()),
                                       policy=WindowPolicy(budget=1024, reserve=64), use_memory=True,
                                       live_sessions=64),
        "full history": DeltaMemChat(plain, tok, store=SessionStore(MemoryBackend()),
                                     policy=WindowPolicy(budget=MAX_POSITIONS, reserve=64), use_memory=False,
                                     live_sessions=64),
    }
    sid = "bench"
    fed = {name: 0 for name in backends}  # filler messages already added
    points: list[Point] = []
    q_iter = iter(questions * 4)
    for target in targets:
        for name, chat in backends.items():
            if name == "full history" and target > full_max:
                continue
            cap = min(target, full_max) if target <= MAX_POSITIONS else target  # same history while both run
            pt = Point(target=target, backend=name)
            # add filler until the history reaches the checkpoint (runs of user+assistant, as they came in)
            t0 = time.perf_counter()
            h = history_tokens(chat, renderer, sid)
            start = h
            while True:
                nxt = msgs[fed[name]: fed[name] + 2]
                add = sum(len(renderer.message_ids(m)) for m in nxt)
                if h + add > cap:
                    break
                chat.add_messages(nxt, session_id=sid)
                fed[name] += 2
                h += add
            pt.ingest_s, pt.ingest_tokens = time.perf_counter() - t0, h - start
            pt.history_tokens = history_tokens(chat, renderer, sid)
            points.append(pt)
            log(f"{name}: history {pt.history_tokens} tokens (+{pt.ingest_tokens} in {pt.ingest_s:.1f} s)")
        # interleaved warm turns
        live = [p for p in points if p.target == target]
        for k in range(turns):
            q = next(q_iter)
            for pt in live:
                chat = backends[pt.backend]
                ws0 = (chat.store.get(sid).metadata or {}).get("window_start", 0)
                gc.collect()
                t0 = now()
                r = chat.chat(q, session_id=sid, max_new_tokens=max_new)
                pt.warm.append(since(t0))
                pt.prompt_tokens.append(r.usage.get("prompt_tokens", 0))
                pt.evicted.append((chat.store.get(sid).metadata or {}).get("window_start", 0) != ws0)
                log(f"{pt.backend} @{pt.history_tokens}: warm turn {k + 1}: {pt.warm[-1][0] * 1e3:.0f} ms, "
                    f"prompt {pt.prompt_tokens[-1]} tokens{' (evicted + rebuilt)' if pt.evicted[-1] else ''}")
        # cold turn: a fork that is not live, so its KV cache is rebuilt from the stored log
        if target <= cold_max:
            q = next(q_iter)
            for pt in live:
                chat = backends[pt.backend]
                chat.fork(sid, "cold")
                gc.collect()
                t0 = now()
                r = chat.chat(q, session_id="cold", max_new_tokens=max_new)
                pt.cold = since(t0)
                pt.cold_prompt_tokens = r.usage.get("prompt_tokens", 0)
                chat.delete("cold")
                log(f"{pt.backend} @{pt.history_tokens}: cold turn {pt.cold[0] * 1e3:.0f} ms")
        # bytes
        for pt in live:
            chat = backends[pt.backend]
            if pt.backend == "full history":
                conv = chat._conversation(sid)  # the live session: its cursor holds the whole history's KV
                kv, n = kv_cache_bytes(conv.cursor.cache)
                pt.kv_bytes = kv
                pt.history_tokens = n  # tokens really in the cache (history + the timed turns)
            else:
                st = chat.state(sid)
                pt.state_nbytes = st.nbytes()
                pt.state_blob = len(st.to_bytes(chat._state_expect()))
                pt.state_S_bytes = st.S.numel() * st.S.element_size()
                pt.history_tokens = history_tokens(chat, renderer, sid)
    return points


def turn_tables(points: list[Point], max_new: int, full_max: int) -> list[str]:
    targets = sorted({p.target for p in points})
    get = {(p.target, p.backend): p for p in points}
    lines = [f"Per-turn latency of `chat(question, max_new_tokens={max_new})` (warm = median over the timed turns "
             "of the live session; cold = first turn of a non-live fork, KV rebuilt from the log). "
             "`prompt` = tokens the model sees (system + visible window + question).", "",
             "| history | δ-mem warm ms | full warm ms | full / δ | δ-mem cold ms | full cold ms | full / δ (cold) "
             "| δ prompt | full prompt | δ ingest tok/s | full ingest tok/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        d, f = get.get((t, "δ-mem + window")), get.get((t, "full history"))
        dw = med([x[0] for x in d.warm]) * 1e3 if d else float("nan")
        fw = med([x[0] for x in f.warm]) * 1e3 if f else float("nan")
        dc = d.cold[0] * 1e3 if d and d.cold else float("nan")
        fc = f.cold[0] * 1e3 if f and f.cold else float("nan")

        def fmt(x: float, spec: str = ".0f") -> str:
            return format(x, spec) if x == x else "—"

        hist = f"{d.history_tokens if d else f.history_tokens}" + (f" / {f.history_tokens}" if d and f else "")
        dp = "/".join(str(x) for x in d.prompt_tokens) if d else "—"
        fp = "/".join(str(x) for x in f.prompt_tokens) if f else "n/a (> 8192 positions)"
        ev = " (evict)" if d and any(d.evicted) else ""
        di = fmt(d.ingest_tokens / d.ingest_s) if d and d.ingest_s else "—"
        fi = fmt(f.ingest_tokens / f.ingest_s) if f and f.ingest_s else "—"
        lines.append(f"| {hist} | {fmt(dw)} | {fmt(fw)} | {fmt(fw / dw, '.2f')}× | {fmt(dc)} | {fmt(fc)} | "
                     f"{fmt(fc / dc, '.1f')}× | {dp}{ev} | {fp} | {di} | {fi} |")
    lines += ["", "History = tokens of the session log (system + messages, δ / full; the replies differ a little). "
              f"Full history stops at ~{full_max} tokens: the backbone has {MAX_POSITIONS} positions, and the "
              "question and reply must fit too. `(evict)`: one of the timed δ-mem turns evicted a chunk of the "
              "window and rebuilt its KV cache (re-reading ≤ 512 tokens), which is included in its latency. "
              "Ingest = `add_messages` throughput while growing the history to this point (δ-mem includes the "
              "window rebuilds after evictions).",
              "Target: δ-mem per-turn latency flat in history length."]
    return lines


def bytes_table(points: list[Point], kv_per_token: float) -> list[str]:
    targets = sorted({p.target for p in points})
    get = {(p.target, p.backend): p for p in points}
    lines = ["| history tokens | KV cache (full history) | δ-state `nbytes()` | δ-state `to_bytes()` | KV / nbytes "
             "| KV / to_bytes | KV / S only |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        d, f = get.get((t, "δ-mem + window")), get.get((t, "full history"))
        if d is None:
            continue
        if f is not None and f.kv_bytes is not None and f.history_tokens >= d.history_tokens - 64:
            n, kv, src = f.history_tokens, f.kv_bytes, ""
        else:
            n, kv, src = d.history_tokens, kv_per_token * d.history_tokens, " (computed)"
        lines.append(f"| {n} | {human_bytes(kv)}{src} | {d.state_nbytes:,} B | {d.state_blob:,} B | "
                     f"{kv / d.state_nbytes:,.0f}× | {kv / d.state_blob:,.0f}× | {kv / d.state_S_bytes:,.0f}× |")
    lines += ["", f"KV cache = key+value tensors of the full-history session's DynamicCache, measured "
              f"({kv_per_token:,.0f} B/token: 30 layers × 2 × 3 KV heads × 64 × fp32); \"computed\" = that "
              "per-token size × history tokens, where full history cannot run. The δ-state size does not depend "
              "on history length. `S only` = the 30 × 8×8 fp32 delta-rule matrices; `nbytes()` also counts "
              "`pend_sum` [30, 576] fp32 (SSW's running sum of the open message), which TSW carries as zeros. "
              "Target: ≥ 10,000× smaller."]
    return lines


def plot(points: list[Point], kv_per_token: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("δ-mem + window", "o-"), ("full history", "s-")):
        ps = sorted((p for p in points if p.backend == name), key=lambda p: p.history_tokens)
        if not ps:
            continue
        a1.plot([p.history_tokens for p in ps], [med([x[0] for x in p.warm]) * 1e3 for p in ps], style,
                label=f"{name} (warm)")
        cold = [p for p in ps if p.cold]
        if cold:
            a1.plot([p.history_tokens for p in cold], [p.cold[0] * 1e3 for p in cold], style.replace("-", "--"),
                    alpha=0.6, label=f"{name} (cold: KV rebuilt)")
    a1.axvline(MAX_POSITIONS, color="grey", lw=0.8, ls=":")
    a1.text(MAX_POSITIONS, a1.get_ylim()[1] * 0.95, " 8192 positions", fontsize=8, va="top")
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("history tokens")
    a1.set_ylabel("per-turn latency (ms)")
    a1.set_title("Per-turn latency (16 new tokens)")
    a1.legend(fontsize=8)
    d = sorted((p for p in points if p.backend == "δ-mem + window"), key=lambda p: p.history_tokens)
    xs = [p.history_tokens for p in d]
    a2.plot(xs, [kv_per_token * x for x in xs], "s-", label="KV cache (full history)")
    a2.plot(xs, [p.state_nbytes for p in d], "o-", label="δ-state nbytes()")
    a2.plot(xs, [p.state_S_bytes for p in d], "^:", label="δ-state S only")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("history tokens")
    a2.set_ylabel("bytes per session")
    a2.set_title("Session memory")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- profile --------------------------------------------------------------------------------------------
def profile_decode(models: dict[str, Any], tok: Any, renderer: ChatRenderer, n: int = 32) -> str:
    hist, _ = filler(renderer, 600, seed=3)
    ids, mids = renderer.render(hist)
    ids, mids = list(renderer.system_ids) + ids[:480], [-1] * len(renderer.system_ids) + mids[:480]
    out = []
    for name in ("plain", "tsw"):
        eng = Engine(models[name], tok)
        state = None if name == "plain" else models[name].deltamem.zero_state(1)
        engine_run(eng, state, ids, mids, 4, eng.eos_ids)  # warm-up
        pr = cProfile.Profile()
        pr.enable()
        engine_run(eng, state, ids, mids, n, eng.eos_ids)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22)
        out.append(f"### cProfile: {name}, prefill 512 + {n} decoded tokens (sorted by own time)\n\n```\n"
                   + s.getvalue().strip() + "\n```\n")
    return "\n".join(out)


# --- main -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, histories up to 8k, cold turns ≤ 2k")
    ap.add_argument("--out", default="docs/bench_speed.md")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out, bench_speed.png)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--targets", type=int, nargs="+", default=None, help="history checkpoints (tokens)")
    ap.add_argument("--turns", type=int, default=None, help="warm turns timed per checkpoint")
    ap.add_argument("--cold-max", type=int, default=None, help="time cold turns up to this history length")
    ap.add_argument("--chat-config", choices=("tsw", "ssw"), default="tsw", help="δ-mem preset for section 2")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF generate reference")
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "turns"))
    ap.add_argument("--profile", action="store_true", help="also cProfile one δ-mem decode")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    targets = args.targets or ([1024, 2048, 4096, 8192] if args.quick else [1024, 2048, 4096, 8192, 16384])
    turns = args.turns or (2 if args.quick else 3)
    cold_max = args.cold_max if args.cold_max is not None else (2048 if args.quick else 8192)
    full_max = MAX_POSITIONS - 64 - 160  # room for the question, the generation prompt and the reply

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    started = dt.datetime.now().astimezone()
    load0 = os.getloadavg()
    t_start = time.perf_counter()

    plain, tok = load_backbone(device="cpu")
    models = {"plain": plain}
    for name, cfg in (("tsw", tsw()), ("ssw", ssw())):
        m = copy.deepcopy(plain)
        attach(m, cfg)  # randomly initialised adapter (output_init=base_slice_fixed: corrections are non-zero)
        models[name] = m
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)

    md: list[str] = []
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    md += ["# δ-mem inference speed and memory", "",
           f"- Command: `{cmd}` ({'quick' if args.quick else 'full'} run)",
           f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
           f"- Threads: torch {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op, "
           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
           f"- Machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
           f"torch {torch.__version__}, transformers {__import__('transformers').__version__}; load average at "
           f"start {load0[0]:.1f} (other jobs were running: wall-clock ratios are noisier than CPU-time ones)",
           "- Backbone: SmolLM2-135M-Instruct, fp32, CPU; δ-mem adapters randomly initialised (rank 8, all 30 "
           "layers, corrections on q and o)", ""]

    speed = None
    if "speed" not in args.skip:
        log(f"section 1: prompts {args.prompts}, {args.new_tokens} new tokens, {repeats} repeats")
        speed = section_speed(models, tok, renderer, args.prompts, args.new_tokens, repeats, not args.no_hf)
        md += ["## 1. Prefill and decode throughput", ""] + speed_tables(speed, args.new_tokens) + [""]

    if "turns" not in args.skip:
        log(f"section 2: targets {targets}, {turns} warm turns, cold up to {cold_max}")
        points = section_turns(plain, models[args.chat_config], tok, renderer, targets, full_max, turns, cold_max, 16)
        kv = [p for p in points if p.kv_bytes]
        kv_per_token = kv[-1].kv_bytes / kv[-1].history_tokens if kv else float("nan")
        md += ["## 2. Per-turn latency vs history length", "",
               f"δ-mem: `DeltaMemChat` with δ-mem {args.chat_config.upper()} and `WindowPolicy(budget=1024, "
               "reserve=64)`. Full history: the same `DeltaMemChat` runtime on the plain backbone (no δ-mem "
               f"attached), `use_memory=False`, `WindowPolicy(budget={MAX_POSITIONS}, reserve=64)` (never evicts "
               "at these lengths). Both sessions receive the same synthetic chat history via `add_messages`.", ""]
        md += turn_tables(points, 16, full_max) + [""]
        md += ["## 3. Bytes per session", ""] + bytes_table(points, kv_per_token) + [""]
        png = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
        plot(points, kv_per_token, png)
        md += ["## 4. Plot", "", f"![per-turn latency and session bytes]({png.name})", ""]

    if args.profile:
        log("profile")
        md += ["## Profile", "", profile_decode(models, tok, renderer), ""]

    md += [f"Total benchmark time: {(time.perf_counter() - t_start) / 60:.1f} min; load average at end "
           f"{os.getloadavg()[0]:.1f}.", ""]
    text = "\n".join(md)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
