"""Benchmark: naive vs chunked gated delta-rule scan (forward, forward+backward).

Usage::

    .venv/bin/python benchmarks/bench_scan.py --threads 2 --repeats 3

Prints a markdown table: T, N, naive / chunked ms (fwd and fwd+bwd), speed ratios and
the max relative error (max|a-b| / max(1, max|b|)) of reads and final state of the
fp32 chunked scan against the fp32 naive scan. N=1 is δ-mem's single 8x8 state of one
layer; N=30 batches all 30 layers of SmolLM2.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from deltamem_agents.core.scan import scan_chunked, scan_naive


def make_inputs(n: int, t: int, r: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.tanh(torch.randn(n, t, r, generator=g)), dim=-1)
    k = F.normalize(torch.tanh(torch.randn(n, t, r, generator=g)), dim=-1)
    v = torch.randn(n, t, r, generator=g)
    beta = torch.sigmoid(2.0 * torch.randn(n, t, r, generator=g))
    state = torch.randn(n, r, r, generator=g)
    return [q, k, v, 1 - beta, beta, beta.clone(), state]


def ratio(a: float, b: float) -> str:
    x = a / b
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def time_ms(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median over ``repeats`` runs after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)


def fwd(fn: Callable, inputs: list[torch.Tensor], mask: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(*inputs, mask)
    return run


def fwd_bwd(fn: Callable, inputs: list[torch.Tensor], mask: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        reads, state = fn(*leaves, mask)
        (reads.sum() + state.sum()).backward()
        return leaves[0].grad
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 30])
    ap.add_argument("--chunk-size", type=int, default=None, help="default: scan_chunked's")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: process CPU time (steadier on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    def chunked(*a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scan_chunked(*a, **kw)

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, r={args.r}, "
          f"repeats={args.repeats} (median), clock={args.clock}, "
          f"chunk_size={args.chunk_size or 'default'}\n")
    print("| T | N | naive fwd ms | chunked fwd ms | fwd × | naive f+b ms | chunked f+b ms "
          "| f+b × | rel err reads | rel err state |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in args.lengths:
        for n in args.batches:
            inputs = make_inputs(n, t, args.r, seed=t + n)
            mask = torch.ones(n, t, dtype=torch.bool)
            mask[:, : t // 64] = False  # some left padding
            with torch.no_grad():
                rn, sn = scan_naive(*inputs, mask)
                rc, sc = chunked(*inputs, mask)
            nf = time_ms(fwd(scan_naive, inputs, mask), args.repeats, clock)
            cf = time_ms(fwd(chunked, inputs, mask), args.repeats, clock)
            nb = time_ms(fwd_bwd(scan_naive, inputs, mask), args.repeats, clock)
            cb = time_ms(fwd_bwd(chunked, inputs, mask), args.repeats, clock)
            print(f"| {t} | {n} | {nf:.1f} | {cf:.2f} | {ratio(nf, cf)} | {nb:.1f} | {cb:.2f} "
                  f"| {ratio(nb, cb)} | {rel_err(rc, rn):.1e} | {rel_err(sc, sn):.1e} |",
                  flush=True)


if __name__ == "__main__":
    main()
