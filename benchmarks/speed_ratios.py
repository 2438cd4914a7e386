"""Side-by-side decode/prefill ratios in one run (the `--ratios` section of bench_speed.py).

Arms, all on the same SmolLM2-135M weights and thread count:
  hf          Hugging Face `model.generate` on the plain backbone (greedy, EOS suppressed)
  plain       the runtime's `Engine` without δ-mem (growing KV cache)
  plain-ref   the same with transformers' plain DynamicCache (the unoptimised loop)
  tsw, ssw    the runtime with randomly initialised TSW / SSW adapters (every token / message written)
  shipped     the runtime with the shipped adapter (TSW, write threshold 0.8), fast path with the compiled step
  shipped-eager  the same with the fast path's eager ops (no compiled step, core/native.py)
  shipped-ref the shipped adapter through the reference δ-mem step and a plain DynamicCache (unoptimised)
Prefill = feeding the prompt (the history write, for δ-mem arms); decode = one greedy token fed back.
Engine arms decode round-robin, one token each in turn, so load on the machine hits them alike; HF runs in
its own slot before and after them (median of both). Ratios: arm / plain − 1 (overhead; the -ref arms against plain-ref, the unoptimised loop on both sides), hf / runtime
(speed-up), runtime tok/s / bandwidth limit, where the limit = measured copy bandwidth / weight bytes.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from deltamem_agents.chat.loading import load_model
from deltamem_agents.core import fastpath, native
from deltamem_agents.core.config import ssw, tsw
from deltamem_agents.patching import attach
from deltamem_agents.runtime.decode import Engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ARMS = ("plain", "plain-ref", "tsw", "ssw", "shipped", "shipped-eager", "shipped-ref")


def copy_bandwidth(threads: int) -> float:
    """Bytes/s moved (read + write) by a 256 MB tensor copy, best of 5."""
    a = torch.ones(64 * 1024 * 1024)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def prompt_ids(tok: Any, n: int) -> tuple[list[int], list[int]]:
    """n tokens of real text (the README, repeated) split into 64-token messages with ids 0, 1, ..."""
    text = (ROOT / "README.md").read_text()
    ids = tok(text)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    ids = ids[:n]
    return ids, [i // 64 for i in range(n)]


class HfTimer:
    """HF streamer: arrival time of each generated token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._seen:
            self.times.append(time.perf_counter())
        self._seen = True

    def end(self) -> None:
        pass


def hf_arm(model: Any, ids: list[int], new: int, eos: int) -> tuple[float, list[float]]:
    x = torch.tensor([ids])
    st = HfTimer()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, temperature=None, top_p=None, top_k=None, streamer=st, pad_token_id=eos)
    return st.times[0] - t0, [b - a for a, b in zip(st.times, st.times[1:])]


class EngineArm:
    def __init__(self, engine: Engine, state_fn: Any, reference: bool, compiled: bool | None = None) -> None:
        """`reference`: the reference δ-mem step; `compiled`: the compiled decode step (core/native.py) on or off
        (None: as configured)."""
        self.engine, self.state_fn, self.reference, self.compiled = engine, state_fn, reference, compiled
        self.prefill: list[float] = []
        self.per_token: list[float] = []  # wall seconds per decoded token
        self.cpu: list[float] = []  # this thread's CPU seconds per decoded token
        self.tokens: list[int] = []

    def _run(self, fn: Any) -> Any:
        old = fastpath.set_enabled(not self.reference)
        old_native = native.set_enabled(self.compiled) if self.compiled is not None else None
        try:
            return fn()
        finally:
            fastpath.set_enabled(old)
            if old_native is not None:
                native.set_enabled(old_native)

    def start(self, ids: list[int], mids: list[int]) -> None:
        self.cur = self.engine.new_cursor(self.state_fn())
        self.mid = mids[-1] + 1
        t = time.perf_counter()
        self.logits = self._run(lambda: self.engine.forward(self.cur, ids, mids))
        self.prefill.append(time.perf_counter() - t)
        self.tokens = []

    def step(self, eos: list[int], generated: bool = False) -> None:
        """Decode one greedy token (never an end token); `generated` marks it as the reply's own (runtime/decode.py)."""
        t, c = time.perf_counter(), time.thread_time()
        logits = self.logits.clone()
        logits[eos] = float("-inf")
        tok = int(torch.argmax(logits))
        self.logits = self._run(lambda: self.engine.forward(self.cur, [tok], [self.mid], generated=generated))
        self.per_token.append(time.perf_counter() - t)
        self.cpu.append(time.thread_time() - c)
        self.tokens.append(tok)


def run(threads: list[int], prompts: list[int], new: int, repeats: int, log: Any) -> list[str]:
    shipped, tok = load_model(device="cpu")
    from deltamem_agents.backbone import load_backbone

    plain, _ = load_backbone(device="cpu")
    models = {"plain": plain, "shipped": shipped}
    for name, cfg in (("tsw", tsw()), ("ssw", ssw())):
        m = copy.deepcopy(plain)
        attach(m, cfg)
        models[name] = m
    eos = [int(tok.eos_token_id)] + [int(i) for i in tok.convert_tokens_to_ids(["<|im_end|>"]) if i is not None]
    wbytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    md = ["| threads | prompt | arm | prefill tok/s | decode tok/s | decode ms/token | prefill overhead vs plain | "
          "decode overhead vs plain | decode vs HF generate | decode / bandwidth limit |",
          "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for th in threads:
        torch.set_num_threads(th)
        bw = copy_bandwidth(th)
        limit = bw / wbytes
        notes.append(f"{th} thread(s): copy bandwidth {bw / 1e9:.1f} GB/s, weights {wbytes / 1e6:.0f} MB -> "
                     f"bandwidth limit {limit:.1f} tok/s")
        for n in prompts:
            ids, mids = prompt_ids(tok, n)
            arms = {
                "plain": EngineArm(Engine(plain, tok), lambda: None, False),
                "plain-ref": EngineArm(Engine(plain, tok, growing_kv=False), lambda: None, True),
                "tsw": EngineArm(Engine(models["tsw"], tok), lambda: models["tsw"].deltamem.zero_state(1), False),
                "ssw": EngineArm(Engine(models["ssw"], tok), lambda: models["ssw"].deltamem.zero_state(1), False),
                "shipped": EngineArm(Engine(shipped, tok), lambda: shipped.deltamem.zero_state(1), False),
                "shipped-eager": EngineArm(Engine(shipped, tok), lambda: shipped.deltamem.zero_state(1), False,
                                           compiled=False),
                "shipped-ref": EngineArm(Engine(shipped, tok, growing_kv=False),
                                         lambda: shipped.deltamem.zero_state(1), True),
            }
            hf_pre, hf_tok = [], []
            for rep in range(repeats):
                log(f"threads {th}, prompt {n}, repeat {rep + 1}/{repeats}")
                p, ts = hf_arm(plain, ids, new, eos[0])
                hf_pre.append(p)
                hf_tok += ts
                for arm in arms.values():
                    arm.start(ids, mids)
                for _ in range(new):
                    for arm in arms.values():
                        arm.step(eos)
                p, ts = hf_arm(plain, ids, new, eos[0])
                hf_pre.append(p)
                hf_tok += ts
                same = arms["shipped"].tokens == arms["shipped-ref"].tokens == arms["shipped-eager"].tokens
                notes.append(f"{th} thread(s), prompt {n}, repeat {rep + 1}: shipped compiled vs eager vs reference "
                             f"greedy tokens identical: {same}")
            hf_ms = statistics.median(hf_tok)
            log(notes[-1])
            md.append(f"| {th} | {n} | hf generate | {n / statistics.median(hf_pre):.0f} | {1 / hf_ms:.2f} | "
                      f"{1000 * hf_ms:.1f} | — | — | 1.00× | {1 / hf_ms / limit:.2f}× |")
            log(md[-1])
            for name, arm in arms.items():
                base = arms["plain-ref" if name.endswith("-ref") else "plain"]
                base_pre, base_ms = statistics.median(base.prefill), statistics.median(base.per_token)
                pre, ms = statistics.median(arm.prefill), statistics.median(arm.per_token)
                po = "—" if arm is base else f"{100 * (pre / base_pre - 1):+.1f}%"
                do = "—" if arm is base else f"{100 * (ms / base_ms - 1):+.1f}%"
                row = (f"| {th} | {n} | {name} | {n / pre:.0f} | {1 / ms:.2f} | {1000 * ms:.1f} | {po} | {do} | "
                       f"{hf_ms / ms:.2f}× | {1 / ms / limit:.2f}× |")
                md.append(row)
                log(row)
    return md + [""] + [f"- {x}" for x in notes]
