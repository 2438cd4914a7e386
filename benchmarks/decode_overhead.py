"""The shipped adapter's decode overhead, side by side: the runtime's Engine with and without δ-mem, one token each
in turn (so load on the machine hits both arms alike), after the same prompt.

    .venv/bin/python benchmarks/decode_overhead.py --threads 1 --prompt 512 --tokens 64 [--eager] [--reference]
        [--profile] [--prefill-repeats 5]

Arms: `plain` (the default backbone loaded without δ-mem), `shipped` (the shipped adapter, fast path with the
compiled decode step when it is available), with --eager `shipped-eager` (the fast path's eager ops) and with
--reference `shipped-ref` (the reference δ-mem step). Reported per arm: median wall and thread-CPU ms per token,
and the overhead vs plain; the shipped arms' greedy tokens are checked against each other. --profile adds a
torch.profiler op count per decoded token for plain and shipped; --prefill-repeats N times the prompt's prefill
(the history write) N times per arm, interleaved, and reports the median thread-CPU time. A quicker companion to
`bench_speed.py --ratios` (which also covers TSW/SSW, HF generate, prefill and 2,048-token prompts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.chat.loading import load_model
from deltamem_agents.core import fastpath
from deltamem_agents.runtime.decode import Engine

try:
    from speed_ratios import EngineArm, prompt_ids
except ImportError:  # run as a module from the repository root
    from benchmarks.speed_ratios import EngineArm, prompt_ids


def make_arm(name: str, model: Any, tok: Any, with_state: bool, reference: bool = False,
             compiled: bool | None = None) -> EngineArm:
    """speed_ratios' arm (Engine, fast path or reference δ-mem step, wall and thread-CPU per token), named."""
    a = EngineArm(Engine(model, tok), (lambda: model.deltamem.zero_state(1)) if with_state else (lambda: None),
                  reference, compiled)
    a.name = name
    return a


def op_count(arm: EngineArm, eos: list[int], n: int = 8) -> tuple[int, float]:
    """(aten ops per decoded token including nested ones, their self CPU ms per token)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            arm.step(eos, generated=True)
    ka = prof.key_averages()
    return sum(e.count for e in ka) // n, sum(e.self_cpu_time_total for e in ka) / 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="prompt + tokens, this many times")
    ap.add_argument("--reference", action="store_true", help="add the reference δ-mem step as an arm")
    ap.add_argument("--eager", action="store_true", help="add the eager fast path (no compiled step) as an arm")
    ap.add_argument("--profile", action="store_true", help="torch.profiler op counts per token")
    ap.add_argument("--prefill-repeats", type=int, default=0, help="also time the prefill, interleaved")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shipped, tok = load_model(device="cpu")
    plain, _ = load_backbone(device="cpu")
    arms = [make_arm("plain", plain, tok, False), make_arm("shipped", shipped, tok, True)]
    if a.eager:
        arms.append(make_arm("shipped-eager", shipped, tok, True, compiled=False))
    if a.reference:
        arms.append(make_arm("shipped-ref", shipped, tok, True, reference=True))
    eos = [int(tok.eos_token_id)] + [int(i) for i in tok.convert_tokens_to_ids(["<|im_end|>"]) if i is not None]
    ids, mids = prompt_ids(tok, a.prompt)
    pre: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for _ in range(a.prefill_repeats):
        for arm in arms:
            c = time.thread_time()
            arm.start(ids, mids)
            pre[arm.name].append(time.thread_time() - c)
    same = True
    for _ in range(a.repeats):
        for arm in arms:
            arm.start(ids, mids)
        for _ in range(a.tokens):
            for arm in arms:
                arm.step(eos, generated=True)
        same &= all(arm.tokens == arms[1].tokens for arm in arms[2:])
    base_w, base_c = statistics.median(arms[0].per_token), statistics.median(arms[0].cpu)
    print(f"threads {a.threads}, prompt {a.prompt}, {a.tokens} tokens x {a.repeats}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| arm | wall ms/token | CPU ms/token | overhead wall | overhead CPU |")
    print("|---|---:|---:|---:|---:|")
    for arm in arms:
        w, c = statistics.median(arm.per_token), statistics.median(arm.cpu)
        ow = "—" if arm is arms[0] else f"{100 * (w / base_w - 1):+.1f}%"
        oc = "—" if arm is arms[0] else f"{100 * (c / base_c - 1):+.1f}%"
        print(f"| {arm.name} | {1000 * w:.1f} | {1000 * c:.1f} | {ow} | {oc} |")
    if a.prefill_repeats:
        base_p = statistics.median(pre[arms[0].name])
        for arm in arms:
            p = statistics.median(pre[arm.name])
            ov = "" if arm is arms[0] else f", {100 * (p / base_p - 1):+.1f}% vs plain"
            print(f"prefill {arm.name}: {1000 * p:.0f} ms CPU (median of {a.prefill_repeats}){ov}")
    if len(arms) > 2:
        print(f"greedy tokens identical across the shipped arms: {same}")
    if a.profile:
        for arm in arms[:2]:
            ops, ms = op_count(arm, eos)
            print(f"{arm.name}: {ops} aten ops per token (nested included), {ms:.1f} ms self CPU per token")


if __name__ == "__main__":
    main()
