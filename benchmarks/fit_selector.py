"""Fit δ-mem's write gates as a token selector (train/write_selector.py) for selective token writes, and print
per-layer recall of fact-value tokens and false-write rate of other tokens on held-out episodes.

Reproduces oracle_write.py's adapter initialisation and input centres (same seed, same calibration pairs), so
the fitted gates can be merged into an adapter whose read path was trained there:

    python benchmarks/fit_selector.py --steps 60 --out runs/selector/gates.safetensors
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import save_file

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.train.calibrate import calibrate_input_centers
from deltamem_agents.train.sampler import EpisodeSampler
from deltamem_agents.train.write_selector import fit_write_gates, selector_report

from oracle_write import KINDS, make_pairs  # noqa: E402  (same directory)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--hi", type=float, default=0.9)
    ap.add_argument("--lo", type=float, default=0.01)
    ap.add_argument("--beta-bias", type=float, default=1.0)
    ap.add_argument("--fit-bias-init", type=float, default=-4.6, help="gate bias the fit starts from (after calibration)")
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default="", help="continue from gates saved by an earlier fit")
    ap.add_argument("--report-thresholds", default="0.5,0.7,0.8,0.9")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_backbone()
    model.to(torch.bfloat16)
    attach(model, DeltaMemConfig(write_granularity="token", beta_bias_init=args.beta_bias, center_inputs=True,
                                 write_threshold=args.threshold))
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    pair_sampler = EpisodeSampler(tok, value_kinds=KINDS, mix={"fact": 1.0}, in_window_frac=0.0)
    train_pairs = make_pairs(pair_sampler, renderer, WindowPolicy(budget=128, reserve=48), 8, "train", 0, "oracle", 60)
    calibrate_input_centers(model, [p for _, raw in train_pairs for p in raw])
    with torch.no_grad():
        for layer in model.deltamem.layers:
            layer.beta_bias.fill_(args.fit_bias_init)
    if args.init:
        from safetensors.torch import load_file
        model.deltamem.load_state_dict(load_file(args.init), strict=False)
    sampler = EpisodeSampler(tok, value_kinds=KINDS, mix={"fact": 0.6, "update": 0.2, "multi": 0.2},
                             in_window_frac=0.2, budget_range=(128, 320), distance_start=60, distance_end=500,
                             total_steps=args.steps, seed=1)
    episodes = (sampler.sample(step, micro) for step in range(10**6) for micro in range(args.batch))
    held = [sampler.heldout(i, budget=256, distance=300) for i in range(args.heldout)]
    t0 = time.time()
    before = selector_report(model, renderer, held, args.threshold)
    losses = fit_write_gates(model, renderer, episodes, steps=args.steps, batch=args.batch, lr=args.lr, hi=args.hi,
                             lo=args.lo)
    after = selector_report(model, renderer, held, args.threshold)
    print(json.dumps({"args": vars(args), "seconds": round(time.time() - t0), "loss_first": losses[:3],
                      "loss_last": losses[-3:], "n_pos": after.n_pos, "n_neg": after.n_neg,
                      "recall_before": [round(x, 3) for x in before.recall],
                      "false_before": [round(x, 4) for x in before.false_rate],
                      "recall": [round(x, 3) for x in after.recall],
                      "false_rate": [round(x, 4) for x in after.false_rate]}), flush=True)
    for tau in [float(x) for x in args.report_thresholds.split(",")]:
        rep = selector_report(model, renderer, held, tau)
        print(json.dumps({"threshold": tau, "recall_mean": round(sum(rep.recall) / len(rep.recall), 3),
                          "recall_min": round(min(rep.recall), 3),
                          "false_mean": round(sum(rep.false_rate) / len(rep.false_rate), 4),
                          "false_max": round(max(rep.false_rate), 4)}), flush=True)
    sd = {k: v.detach().contiguous() for k, v in model.deltamem.state_dict().items()
          if k.endswith(("beta_proj", "beta_bias", "input_center"))}
    save_file(sd, args.out)


if __name__ == "__main__":
    main()
