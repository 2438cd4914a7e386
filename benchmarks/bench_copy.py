"""Benchmark: what the copy channel costs per decoded token, side by side in one run (interleaved repeats).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_copy.py --adapter /path/to/adapter-with-copy

Arms, all on the same loaded backbone (the default SmolLM2-135M-Instruct unless --backbone), greedy decoding of
`--new` tokens after a `--prompt`-token prompt through `Engine` (EOS masked by an impossible EOS id):
  - `plain δ-mem`: the adapter with its copy channel switched off (the δ layers only: `adapter.copy` detached
    from the call by running a copy-less twin adapter with the same δ weights);
  - `copy, one pass`: the copy channel with the tied LM head's one-matmul read (the default);
  - `copy, two passes`: the same with the base logits and the read as two matmuls over E (`one_pass = False`).
Reported: median ms per decoded token of each arm and the ratios to `plain δ-mem` (wall clock and process CPU
time). Speed targets live here, never in tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", required=True, help="an adapter directory with a copy channel")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deltamem_agents.backbone import load_backbone
    from deltamem_agents.patching import detach
    from deltamem_agents.patching.adapter_io import load_adapter
    from deltamem_agents.runtime.decode import Engine, Generation, GenerationConfig

    model, tok = load_backbone(args.backbone)
    adapter = load_adapter(model, args.adapter)
    if adapter.copy is None:
        raise SystemExit(f"{args.adapter} has no copy channel")
    V = model.config.vocab_size
    engine = Engine(model, tok, eos_ids=(V + 1,))
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, V - 100, (args.prompt,), generator=g).tolist()
    cfg = GenerationConfig(max_new_tokens=args.new)

    def run(arm: str) -> tuple[float, float]:
        channel = adapter.copy
        model.lm_head.one_pass = arm != "copy, two passes"
        if arm == "plain δ-mem":
            adapter.copy = None  # forward_with_state then opens no copy call: the wrappers pass through
        try:
            cur = engine.new_cursor(adapter.zero_state(1))
            logits = engine.forward(cur, prompt, [0] * len(prompt))  # written: the copy state is not zero
            res = Generation()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in engine.decode(cur, logits, 1, cfg, None, res):
                pass
            w, c = time.perf_counter() - w0, time.process_time() - c0
            n = max(1, res.n_fed + 1)
            return 1000 * w / n, 1000 * c / n
        finally:
            adapter.copy = channel
            model.lm_head.one_pass = True

    arms = ["plain δ-mem", "copy, one pass", "copy, two passes"]
    times: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
    run(arms[1])  # warm-up
    for _ in range(args.repeats):
        for a in arms:
            times[a].append(run(a))
    base_w = statistics.median(t[0] for t in times[arms[0]])
    base_c = statistics.median(t[1] for t in times[arms[0]])
    print(f"backbone {model.config._name_or_path or 'default'}, prompt {args.prompt}, {args.new} new tokens, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats, copy rank {adapter.config.copy_rank}")
    print("| arm | ms / token (wall) | ratio | ms / token (CPU) | ratio |\n|---|---|---|---|---|")
    for a in arms:
        w = statistics.median(t[0] for t in times[a])
        c = statistics.median(t[1] for t in times[a])
        print(f"| {a} | {w:.2f} | {w / base_w:.3f} | {c:.2f} | {c / base_c:.3f} |")
    detach(model)


if __name__ == "__main__":
    main()
