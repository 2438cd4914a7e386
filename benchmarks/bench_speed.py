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
   that holds the whole history (no eviction). The δ-mem session grows through the checkpoints (history
   written with `add_messages`); the full-history session of each checkpoint is put in the store with the
   same messages, so its first turn is cold (KV cache of the whole history rebuilt, as after a restart).
   At each checkpoint `chat(question, max_new_tokens=16)` is timed warm (live session, KV cache reused;
   the two backends interleaved) and cold (δ-mem: a fork that is not live, so its window is rebuilt).
   The backbone has 8192 positions, so full history stops just under 8k; δ-mem rebuilds its window from
   position 0 after each eviction, so it continues to 16k (full run).
3. Bytes per session: the δ-state (`nbytes()`, `len(to_bytes())`) vs the KV cache of the same history
   (bytes of the key/value tensors of the full-history session's DynamicCache; beyond 8k computed
   from the measured bytes per token).
4. A plot (`docs/bench_speed.png`): per-turn latency vs history, and state vs KV bytes (log scale).

Section 5 times the pieces of one δ-mem decode step (T=1) in isolation. `--profile` adds aten-op counts per
decoded token (torch.profiler) and a cProfile of the decode loop, plain vs TSW (the per-token overhead).
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
    prefill: list[tuple[float, float]] = field(default_factory=list)  # (wall, cpu) seconds per prefill
    per_token: list[tuple[float, float]] = field(default_factory=list)  # (wall, cpu) seconds per decoded token


def hf_run(model: Any, ids: list[int], new_tokens: int, eos: int, t: Timings) -> None:
    """HF generate (greedy, EOS suppressed by min_new_tokens); per-token times from a timing streamer."""
    x = torch.tensor([ids])
    st = TimingStreamer()
    gc.collect()
    t0 = now()
    with torch.inference_mode():
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                       streamer=st, pad_token_id=eos)
    assert len(st.times) == new_tokens, len(st.times)
    t.prefill.append((st.times[0] - t0[0], st.cpu[0] - t0[1]))
    for i in range(1, new_tokens):  # tokens 2..N: one forward + one greedy pick each
        t.per_token.append((st.times[i] - st.times[i - 1], st.cpu[i] - st.cpu[i - 1]))


def section_speed(models: dict[str, Any], tok: Any, renderer: ChatRenderer, prompts: list[int], new_tokens: int,
                  repeats: int, hf_prompts: list[int]) -> dict[int, dict[str, Timings]]:
    """Per repeat and prompt: prefill plain, TSW, SSW one after the other, then decode the three round-robin
    one token at a time (each `next()` of `Engine.decode` = one forward + pick + detokenise), then HF."""
    hist, _ = filler(renderer, max(prompts) + 64, seed=1)
    h_ids, h_mids = renderer.render(hist)
    sys_ids = list(renderer.system_ids)
    engines = {name: Engine(m, tok) for name, m in models.items()}
    eos = engines["plain"].eos_ids
    out: dict[int, dict[str, Timings]] = {P: {name: Timings() for name in engines} for P in prompts}

    def fresh_state(name: str) -> Any:
        return None if name == "plain" else models[name].deltamem.zero_state(1)

    for name, eng in engines.items():  # warm-up: first-call allocations, lazy init
        cur = eng.new_cursor(fresh_state(name))
        logits = eng.forward(cur, sys_ids + h_ids[:32], [-1] * len(sys_ids) + h_mids[:32])
        for _ in eng.decode(cur, logits, 10**6, GenerationConfig(max_new_tokens=4), NoEos(eos), Generation()):
            pass
    for r in range(repeats):
        for P in prompts:
            ids = sys_ids + h_ids[: P - len(sys_ids)]
            mids = [-1] * len(sys_ids) + h_mids[: P - len(sys_ids)]
            gens, results = {}, {}
            for name, eng in engines.items():
                cur = eng.new_cursor(fresh_state(name))
                gc.collect()
                t0 = now()
                logits = eng.forward(cur, ids, mids)
                out[P][name].prefill.append(since(t0))
                results[name] = Generation()
                gens[name] = eng.decode(cur, logits, max(mids) + 1, GenerationConfig(max_new_tokens=new_tokens),
                                        NoEos(eos), results[name])
            gc.collect()
            active = list(gens)
            while active:
                for name in list(active):
                    res = results[name]
                    n0 = len(res.token_ids)
                    t0 = now()
                    try:
                        next(gens[name])
                    except StopIteration:
                        active.remove(name)
                    w, c = since(t0)
                    n1 = len(res.token_ids)
                    if n0 >= 1 and n1 > n0:  # the first pick uses the prefill logits: no forward in it
                        out[P][name].per_token += [(w / (n1 - n0), c / (n1 - n0))] * (n1 - n0)
            for name, res in results.items():
                assert len(res.token_ids) == new_tokens, (name, len(res.token_ids))
            if P in hf_prompts:
                hf_run(models["plain"], ids, new_tokens, tok.eos_token_id, out[P].setdefault("hf generate", Timings()))
            msg = ", ".join(f"{n}: prefill {P / t.prefill[-1][0]:.0f} tok/s, decode "
                            f"{1e3 * med([x[0] for x in t.per_token[-(new_tokens - 1):]]):.0f} ms/tok"
                            for n, t in out[P].items())
            log(f"repeat {r + 1}/{repeats} P={P}: {msg}")
    return out


LABELS = {"plain": "plain (Engine, no δ-mem)", "tsw": "δ-mem TSW (Engine)", "ssw": "δ-mem SSW (Engine)",
          "hf generate": "plain, HF `generate` (reference)"}


def speed_tables(res: dict[int, dict[str, Timings]], new_tokens: int) -> list[str]:
    lines = []
    for P, by in res.items():
        base = by["plain"]
        bp = [med([x[i] for x in base.prefill]) for i in (0, 1)]
        bd = [med([x[i] for x in base.per_token]) for i in (0, 1)]
        lines += [f"**Prompt {P} tokens, then {new_tokens} greedy tokens** — prefill: median of {len(base.prefill)} "
                  f"interleaved repeats; decode: median per-token time over {len(base.per_token)} tokens per variant, "
                  "decoded round-robin (plain, TSW, SSW, plain, ...). Overhead = time / plain time − 1, from "
                  "wall-clock and from process CPU time.", "",
                  "| variant | prefill tok/s | prefill overhead (wall / CPU) | decode tok/s | decode ms/token "
                  "(wall / CPU) | decode overhead (wall / CPU) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, t in by.items():
            p = [med([x[i] for x in t.prefill]) for i in (0, 1)]
            d = [med([x[i] for x in t.per_token]) for i in (0, 1)]
            if name == "plain":
                po = do = "—"
            else:
                po = f"{pct(p[0] / bp[0] - 1)} / {pct(p[1] / bp[1] - 1)}"
                do = f"{pct(d[0] / bd[0] - 1)} / {pct(d[1] / bd[1] - 1)}"
            lines.append(f"| {LABELS[name]} | {P / p[0]:.1f} | {po} | {1 / d[0]:.2f} | {d[0] * 1e3:.1f} / "
                         f"{d[1] * 1e3:.1f} | {do} |")
        lines.append("")
    lines.append("Targets: decode overhead ≤ 5%, prefill/write overhead ≤ 15%. "
                 "The HF `generate` row is not part of "
                 "the round-robin: its prefill includes picking the first token and its decode times are the "
                 "intervals between streamed tokens, measured in its own slot after the three Engine variants.")
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
    ingest_s: float = 0.0  # δ-mem: wall seconds of add_messages to reach this point (from the previous one)
    ingest_tokens: int = 0
    kv_bytes: int | None = None
    kv_tokens: int = 0
    tokens_after: int = 0  # δ-mem: history tokens after the timed turns (when its state was measured)
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


def count_tokens(renderer: ChatRenderer, msgs: list[dict]) -> int:
    return len(renderer.system_ids) + sum(len(renderer.message_ids(m)) for m in msgs)


def window_start(chat: DeltaMemChat, sid: str) -> int:
    rec = chat.store.get(sid)
    return int((rec.metadata or {}).get("window_start", 0)) if rec else 0


def timed_turn(chat: DeltaMemChat, sid: str, q: str, max_new: int) -> tuple[tuple[float, float], int, bool]:
    ws0 = window_start(chat, sid)
    gc.collect()
    t0 = now()
    r = chat.chat(q, session_id=sid, max_new_tokens=max_new)
    took = since(t0)
    return took, int(r.usage.get("prompt_tokens", 0)), window_start(chat, sid) != ws0


def section_turns(plain: Any, delta_model: Any, tok: Any, renderer: ChatRenderer, targets: list[int],
                  full_max: int, turns: int, cold_max: int, max_new: int) -> list[Point]:
    """δ-mem: one session grows through the checkpoints via add_messages. Full history: at each checkpoint a
    session holding the same filler history is put in the store (as after a restart), so its first turn
    (cold) rebuilds the KV cache of the whole history in one prefill; the following turns are warm."""
    msgs, questions = filler(renderer, max(targets) + 256, seed=2)
    sysp = DEFAULT_SYSTEM_PROMPT
    delta = DeltaMemChat(delta_model, tok, store=SessionStore(MemoryBackend()),
                         policy=WindowPolicy(budget=1024, reserve=64), use_memory=True, live_sessions=64)
    full = DeltaMemChat(plain, tok, store=SessionStore(MemoryBackend()),
                        policy=WindowPolicy(budget=MAX_POSITIONS, reserve=64), use_memory=False, live_sessions=64)
    sid, fed = "bench", 0
    points: list[Point] = []
    q_iter = iter(questions * 8)
    for target in targets:
        cap = min(target, full_max) if target <= MAX_POSITIONS else target  # same filler while both run
        d = Point(target=target, backend="δ-mem + window")
        t0 = time.perf_counter()
        h = count_tokens(renderer, msgs[:fed])
        start = h
        while fed + 2 <= len(msgs):
            nxt = msgs[fed: fed + 2]  # a user message and its reply, added as they would have come in
            add = sum(len(renderer.message_ids(m)) for m in nxt)
            if h + add > cap:
                break
            delta.add_messages(nxt, session_id=sid)
            fed, h = fed + 2, h + add
        d.ingest_s, d.ingest_tokens = time.perf_counter() - t0, h - start
        d.history_tokens = count_tokens(renderer, delta.history(sid))
        points.append(d)
        log(f"δ-mem: history {d.history_tokens} tokens (+{d.ingest_tokens} in {d.ingest_s:.1f} s)")
        live = [(d, delta, sid)]
        if target <= MAX_POSITIONS:
            f = Point(target=target, backend="full history")
            fsid = f"full-{target}"
            rec = full.store.get_or_create(fsid, {"system_prompt": sysp})
            full.store.commit(fsid, state=None, messages=msgs[:fed], expected_version=rec.version,
                              metadata={"window_start": 0, "system_prompt": sysp, "num_messages": fed})
            f.history_tokens = count_tokens(renderer, msgs[:fed])
            f.cold, f.cold_prompt_tokens, _ = timed_turn(full, fsid, next(q_iter), max_new)
            log(f"full history @{f.history_tokens}: cold turn (rebuild the whole KV) {f.cold[0] * 1e3:.0f} ms, "
                f"prompt {f.cold_prompt_tokens} tokens")
            points.append(f)
            live.append((f, full, fsid))
        if target <= cold_max:  # δ-mem cold: a fork that is not live, so its window's KV is rebuilt from the log
            delta.fork(sid, "cold")
            d.cold, d.cold_prompt_tokens, _ = timed_turn(delta, "cold", next(q_iter), max_new)
            delta.delete("cold")
            log(f"δ-mem @{d.history_tokens}: cold turn {d.cold[0] * 1e3:.0f} ms, prompt {d.cold_prompt_tokens}")
        for k in range(turns):  # interleaved warm turns
            q = next(q_iter)
            for pt, chat, s in live:
                took, prompt, ev = timed_turn(chat, s, q, max_new)
                pt.warm.append(took)
                pt.prompt_tokens.append(prompt)
                pt.evicted.append(ev)
                log(f"{pt.backend} @{pt.history_tokens}: warm turn {k + 1}: {took[0] * 1e3:.0f} ms wall, "
                    f"{took[1] * 1e3:.0f} ms CPU, prompt {prompt} tokens{' (evicted + rebuilt)' if ev else ''}")
        d.tokens_after = count_tokens(renderer, delta.history(sid))
        st = delta.state(sid)
        d.state_nbytes = st.nbytes()
        d.state_blob = len(st.to_bytes(delta._state_expect()))
        d.state_S_bytes = st.S.numel() * st.S.element_size()
        if len(live) > 1:
            f, _, fsid = live[1]
            conv = full._conversation(fsid)  # the live session: its cursor holds the whole history's KV cache
            f.kv_bytes, f.kv_tokens = kv_cache_bytes(conv.cursor.cache)
            full.delete(fsid)  # free the KV cache
    return points


def turn_tables(points: list[Point], max_new: int, full_max: int) -> list[str]:
    targets = sorted({p.target for p in points})
    get = {(p.target, p.backend): p for p in points}

    def fmt(x: float, spec: str = ".0f") -> str:
        return format(x, spec) if x == x else "—"

    def warm(p: Point | None, i: int, evicting: bool = False) -> float:
        if p is None:
            return float("nan")
        xs = [w[i] for w, ev in zip(p.warm, p.evicted) if ev == evicting]
        return med(xs) * 1e3 if xs else float("nan")

    lines = [f"Per-turn latency of `chat(question, max_new_tokens={max_new})`, ms. Warm = median over the timed "
             "turns of the live session that did not evict (δ-mem turns that evicted a chunk and rebuilt the window "
             "are listed separately); cold = first turn of a session that is not live (δ-mem: a fork; full: the "
             "session as stored), i.e. the KV cache is rebuilt from the log, as after a restart. CPU = process "
             "CPU time (robust to other jobs on the machine), wall = wall-clock. `prompt` = tokens the model "
             "sees on the warm turns (system + visible window + question).", "",
             "| history before the turns (δ / full) | δ-mem warm CPU | full warm CPU | full / δ | δ-mem warm wall "
             "| full warm wall | δ-mem evicting turn wall | δ-mem cold wall | full cold wall | full / δ cold "
             "| δ prompt | full prompt |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        d, f = get.get((t, "δ-mem + window")), get.get((t, "full history"))
        dw, fw = warm(d, 1), warm(f, 1)
        dww, fww = warm(d, 0), warm(f, 0)
        dev = warm(d, 0, True)
        dc = d.cold[0] * 1e3 if d and d.cold else float("nan")
        fc = f.cold[0] * 1e3 if f and f.cold else float("nan")
        hist = f"{d.history_tokens}" + (f" / {f.history_tokens}" if f else " / —")
        dp = "/".join(str(x) for x in d.prompt_tokens)
        fp = "/".join(str(x) for x in f.prompt_tokens) if f else f"n/a (> {MAX_POSITIONS} positions)"
        if f and any(f.evicted):
            fp += " (evicted!)"
        lines.append(f"| {hist} | {fmt(dw)} | {fmt(fw)} | {fmt(fw / dw, '.2f')}× | {fmt(dww)} | {fmt(fww)} | "
                     f"{fmt(dev)} | {fmt(dc)} | {fmt(fc)} | {fmt(fc / dc, '.1f')}× | {dp} | {fp} |")
    ing = [p for p in points if p.backend == "δ-mem + window" and p.ingest_s]
    rate = sum(p.ingest_tokens for p in ing) / sum(p.ingest_s for p in ing) if ing else float("nan")
    lines += ["", f"History = tokens of the session log (system + messages); the δ-mem session also holds its earlier "
              f"timed turns. Full history stops at {full_max} tokens of history: the backbone has {MAX_POSITIONS} "
              "positions and the timed turns must fit too; δ-mem rebuilds its window from position 0 after each "
              "eviction, so its history is unbounded. δ-mem history was written with `add_messages` (one user + "
              f"assistant pair per call) at {rate:.0f} tok/s wall on average, window rebuilds after evictions "
              "included.",
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
        if f is not None and f.kv_bytes is not None:
            n, kv, src = f.kv_tokens, f.kv_bytes, ""
        else:
            n, kv, src = d.tokens_after, kv_per_token * d.tokens_after, " (computed)"
        lines.append(f"| {n} | {human_bytes(kv)}{src} | {d.state_nbytes:,} B | {d.state_blob:,} B | "
                     f"{kv / d.state_nbytes:,.0f}× | {kv / d.state_blob:,.0f}× | {kv / d.state_S_bytes:,.0f}× |")
    lines += ["", f"KV cache = key+value tensors of the full-history session's DynamicCache after its timed turns, "
              f"measured ({kv_per_token:,.0f} B/token = 30 layers × 2 × 3 KV heads × 64 dims × 4 B); \"computed\" "
              "= that per-token size × history tokens, where full history cannot run. The δ-state does not grow "
              "with history. `S only` = the 30 × (8×8) fp32 delta-rule matrices (7,680 B); `nbytes()` also counts "
              "`pend_sum` [30, 576] fp32 = 69,120 B (SSW's running sum of the open message; TSW carries it as "
              "zeros) — SSW and TSW states have the same size. Target: ≥ 10,000× smaller."]
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
        a1.plot([p.history_tokens for p in ps],
                [med([w[0] for w, ev in zip(p.warm, p.evicted) if not ev] or [w[0] for w in p.warm]) * 1e3 for p in ps],
                style, label=f"{name} (warm)")
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
    xs = [p.tokens_after for p in d]
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


def engine_run(engine: Engine, state: Any, ids: list[int], mids: list[int], new_tokens: int,
               eos: tuple[int, ...]) -> None:
    cur = engine.new_cursor(state)
    logits = engine.forward(cur, ids, mids)
    for _ in engine.decode(cur, logits, max(mids) + 1, GenerationConfig(max_new_tokens=new_tokens), NoEos(eos),
                           Generation()):
        pass


# --- profile / micro -----------------------------------------------------------------------------------
def op_counts(models: dict[str, Any], tok: Any, steps: int = 4) -> list[str]:
    """torch.profiler: aten op calls and CPU time per decoded token (256-token cache), per variant."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    ids = list(range(1000, 1256))
    for name, label in (("plain", "plain (no δ-mem attached)"), ("tsw", "TSW model, state=None (pass-through)"),
                        ("tsw", "δ-mem TSW"), ("ssw", "δ-mem SSW")):
        eng = Engine(models[name], tok)
        state = None if name == "plain" or "pass-through" in label else models[name].deltamem.zero_state(1)
        cur = eng.new_cursor(state)
        eng.forward(cur, ids, [0] * len(ids))
        eng.forward(cur, [5], [1])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = now()
            for _ in range(steps):
                eng.forward(cur, [5], [1])
            took = since(t0)
        ev = prof.key_averages()
        n_ops = sum(e.count for e in ev if e.key.startswith("aten::")) / steps
        n_top = sum(1 for e in prof.events() if e.key.startswith("aten::") and e.cpu_parent is None) / steps
        rows.append(f"| {label} | {n_top:,.0f} | {n_ops:,.0f} | {took[1] / steps * 1e3:.1f} |")
    return ["| variant | top-level aten ops per decoded token | all aten ops (incl. nested) | CPU ms per token "
            "(under the profiler) |", "|---|---:|---:|---:|"] + rows


def profile_decode(models: dict[str, Any], tok: Any, renderer: ChatRenderer, n: int = 32) -> str:
    """Op counts per decoded token, then a cProfile of the decode loop only (prefill outside), plain vs TSW."""
    out = ["\n".join(op_counts(models, tok)), ""]
    hist, _ = filler(renderer, 600, seed=3)
    ids, mids = renderer.render(hist)
    ids, mids = list(renderer.system_ids) + ids[:480], [-1] * len(renderer.system_ids) + mids[:480]
    for name in ("plain", "tsw"):
        eng = Engine(models[name], tok)
        state = None if name == "plain" else models[name].deltamem.zero_state(1)
        engine_run(eng, state, ids, mids, 4, eng.eos_ids)  # warm-up
        cur = eng.new_cursor(state)
        logits = eng.forward(cur, ids, mids)
        res = Generation()
        pr = cProfile.Profile()
        pr.enable()
        for _ in eng.decode(cur, logits, max(mids) + 1, GenerationConfig(max_new_tokens=n), NoEos(eng.eos_ids), res):
            pass
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(16)
        body = "\n".join(line[:150] for line in s.getvalue().strip().splitlines())
        out.append(f"cProfile, {name}: {n} decoded tokens after a 512-token prompt (sorted by own time)\n\n```\n"
                   + body + "\n```\n")
    return "\n".join(out)


def micro(models: dict[str, Any]) -> list[str]:
    """CPU µs per call of the pieces of one δ-mem decode step (T=1), against one backbone projection."""
    import torch.nn.functional as F

    from deltamem_agents.core.scan import scan
    from deltamem_agents.core.segments import Segments

    def bench(f: Callable[[], Any], n: int = 1000) -> float:
        for _ in range(30):
            f()
        ts = []
        for _ in range(5):
            t = time.process_time()
            for _ in range(n // 5):
                f()
            ts.append((time.process_time() - t) / (n // 5))
        return statistics.median(ts) * 1e6

    rows = []
    x = torch.randn(1, 1, 576)
    valid, ids = torch.ones(1, 1, dtype=torch.bool), torch.tensor([[3]])
    with torch.inference_mode():
        w = models["plain"].model.layers[0].self_attn.q_proj.weight
        rows.append(("backbone q_proj (576×576 linear), for scale", bench(lambda: F.linear(x, w)), "—"))
        for name in ("tsw", "ssw"):
            ad = models[name].deltamem
            layer, st = ad.layers[0], ad.zero_state(1)
            mm = name == "ssw"
            seg = Segments.build(valid, ids, message_mode=mm, pend_id=torch.tensor([3]), pend_count=torch.tensor([5.0]))
            step = layer.step(x, st.S[0], st.pend_sum[0], seg, True)
            rows.append((f"{name.upper()} `DeltaMemLayer.step` (read + write)",
                         bench(lambda: layer.step(x, st.S[0], st.pend_sum[0], seg, True)), "× 30 layers"))
            rows.append((f"{name.upper()} `DeltaMemLayer.project` (q,k,v,β: 4 linears + tanh/normalize)",
                         bench(lambda: layer.project(x)), "inside step"))
            rows.append((f"{name.upper()} `corrections` (δq and δo; called by both wrappers)",
                         bench(lambda: layer.corrections(step.read)), "× 2 × 30 layers"))
            rows.append((f"{name.upper()} `Segments.build`",
                         bench(lambda: Segments.build(valid, ids, message_mode=mm, pend_id=st.pend_id,
                                                      pend_count=st.pend_count)), "× 1"))
        q = F.normalize(torch.randn(1, 1, 8), dim=-1)
        v, b, S0 = torch.randn(1, 1, 8), torch.rand(1, 1, 8), torch.zeros(1, 8, 8)
        m = torch.ones(1, 1, dtype=torch.bool)
        rows.append(("`scan` at T=1 (TSW decode: autocast ctx, casts, unbind, einsum, where, stack)",
                     bench(lambda: scan(q, q, v, 1 - b, b, b, S0, m)), "inside TSW step"))
        rows.append(("the same delta update as 3 bare tensor ops, for scale",
                     bench(lambda: S0 * (1 - b)[0, 0, :, None] + torch.outer(v[0, 0] - S0[0] @ q[0, 0], q[0, 0])),
                     "—"))
        st = models["tsw"].deltamem.zero_state(1)
        rows.append(("`check_state` (shape check + 3 `isfinite().all()`)",
                     bench(lambda: models["tsw"].deltamem.check_state(st)), "× 1"))
    lines = ["| piece (one decode token) | CPU µs per call | calls per token |", "|---|---:|---:|"]
    lines += [f"| {a} | {b:.1f} | {c} |" for a, b, c in rows]
    return lines


# --- main -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 repeats, HF reference at 512 only, histories up to ~8k (no 16k point)")
    ap.add_argument("--out", default="docs/bench_speed.md")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out, bench_speed.png)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--targets", type=int, nargs="+", default=None, help="history checkpoints (tokens)")
    ap.add_argument("--turns", type=int, default=None, help="warm turns timed per checkpoint")
    ap.add_argument("--cold-max", type=int, default=None,
                    help="time δ-mem cold turns up to this history length (default: all; "
                         "full history is always cold first)")
    ap.add_argument("--chat-config", choices=("tsw", "ssw"), default="tsw", help="δ-mem preset for section 2")
    ap.add_argument("--hf-prompts", type=int, nargs="*", default=None,
                    help="prompt lengths that also get the HF generate reference (default: all; quick: 512)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "turns"))
    ap.add_argument("--profile", action="store_true",
                    help="also count aten ops per decoded token and cProfile a decode")
    ap.add_argument("--ratios", action="store_true",
                    help="only the side-by-side ratios (HF generate, runtime with/without δ-mem, fast vs reference "
                         "path) at --ratio-threads and --prompts; written into --out between its markers")
    ap.add_argument("--ratio-threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if args.ratios:
        return ratios_main(args)
    repeats = args.repeats or (2 if args.quick else 3)
    targets = args.targets or ([1024, 2048, 4096, 8192] if args.quick else [1024, 2048, 4096, 8192, 16384])
    turns = args.turns or 3
    cold_max = args.cold_max if args.cold_max is not None else max(targets)
    hf_prompts = args.hf_prompts if args.hf_prompts is not None else ([512] if args.quick else args.prompts)
    full_max = MAX_POSITIONS - 64 - 256  # room for the timed turns (questions, generation prompts, replies)

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

    if "speed" not in args.skip:
        log(f"section 1: prompts {args.prompts}, {args.new_tokens} new tokens, {repeats} repeats")
        speed = section_speed(models, tok, renderer, args.prompts, args.new_tokens, repeats, hf_prompts)
        md += ["## 1. Prefill and decode throughput", ""] + speed_tables(speed, args.new_tokens) + [""]

    if "turns" not in args.skip:
        log(f"section 2: targets {targets}, {turns} warm turns, cold up to {cold_max}")
        points = section_turns(plain, models[args.chat_config], tok, renderer, targets, full_max, turns, cold_max, 16)
        kv = [p for p in points if p.kv_bytes]
        kv_per_token = kv[-1].kv_bytes / kv[-1].kv_tokens if kv else float("nan")
        md += ["## 2. Per-turn latency vs history length", "",
               f"δ-mem: `DeltaMemChat` with δ-mem {args.chat_config.upper()} and `WindowPolicy(budget=1024, "
               "reserve=64)`. Full history: the same `DeltaMemChat` runtime on the plain backbone (no δ-mem "
               f"attached), `use_memory=False`, `WindowPolicy(budget={MAX_POSITIONS}, reserve=64)` (never evicts "
               "at these lengths). The δ-mem session grows through the checkpoints: the synthetic chat history is "
               "written with `add_messages`, then the turns are timed. The full-history session at each checkpoint "
               "holds the same filler messages, put in the session store as after a restart: its first turn (cold) "
               "rebuilds the KV cache of the whole history in one prefill, the following (warm) turns reuse it "
               "(exactly what incremental `add_messages` would have left in the cache, at a fraction of the "
               "benchmark's time). Warm turns of the two backends are interleaved.", ""]
        md += turn_tables(points, 16, full_max) + [""]
        md += ["## 3. Bytes per session", ""] + bytes_table(points, kv_per_token) + [""]
        png = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
        plot(points, kv_per_token, png)
        md += ["## 4. Plot", "", f"![per-turn latency and session bytes]({png.name})", ""]

    log("micro-benchmarks")
    md += ["## 5. Where δ-mem's per-token time goes (micro-benchmarks, T=1)", ""] + micro(models) + [""]
    if args.profile:
        log("profile")
        md += ["## 6. Profile of the decode loop", "", profile_decode(models, tok, renderer), ""]

    md += [f"Total benchmark time: {(time.perf_counter() - t_start) / 60:.1f} min; load average at end "
           f"{os.getloadavg()[0]:.1f}.", ""]
    text = "\n".join(md)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"wrote {out}")


RATIOS_START, RATIOS_END = "<!-- ratios:start -->", "<!-- ratios:end -->"


def ratios_main(args: argparse.Namespace) -> None:
    """`--ratios`: run speed_ratios.py's arms and put its table into --out (replacing the previous one)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import speed_ratios

    new = args.new_tokens if args.new_tokens != 64 or not args.quick else 24
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_interop_threads(1)
    started = dt.datetime.now().astimezone()
    load0, t0 = os.getloadavg(), time.perf_counter()
    table = speed_ratios.run(args.ratio_threads, args.prompts, new, repeats, log)
    cmd = ".venv/bin/python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    md = [RATIOS_START, "## Side-by-side ratios (one run)", "",
          f"- Command: `{cmd}`; {started.strftime('%Y-%m-%d %H:%M %Z')}; {repeats} repeat(s), {new} decoded "
          f"tokens per arm and repeat; load average {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end "
          f"(other jobs were running); {(time.perf_counter() - t0) / 60:.1f} min",
          "- Arms (benchmarks/speed_ratios.py): `hf generate` on the plain backbone; the runtime's Engine without "
          "δ-mem (`plain`: growing KV cache; `plain-ref`: transformers' DynamicCache); with random TSW / SSW "
          "adapters (every token / message written); with the shipped adapter (`shipped`: fast path; "
          "`shipped-ref`: the reference δ-mem step and DynamicCache, i.e. the unoptimised loop). Engine arms "
          "decode round-robin; HF runs before and after them. Wall-clock medians (decode: per token over all "
          "repeats). The -ref arms' overheads are against plain-ref.", ""] + table + ["", RATIOS_END]
    text = "\n".join(md)
    print(text)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if RATIOS_START in old and RATIOS_END in old:
        head, rest = old.split(RATIOS_START, 1)
        doc = head + text + rest.split(RATIOS_END, 1)[1]
    elif "## 1. " in old:
        head, rest = old.split("## 1. ", 1)
        doc = head + text + "\n\n## 1. " + rest
    else:
        doc = old + "\n" + text + "\n"
    out.write_text(doc)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
