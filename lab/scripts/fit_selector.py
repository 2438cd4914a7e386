"""Fit δ-mem's write gates as a token selector (train/write_selector.py) for selective token writes, and print
per-layer recall of fact-value tokens and false-write rate of other tokens on held-out episodes.

Reproduces oracle_write.py's adapter initialisation and input centres (same seed, same calibration pairs), so
the fitted gates can be merged into an adapter whose read path was trained there. The fit itself is
`lab.selector_fit` (= `python -m lab fit-selector`, which copies the centres from a stage-1
adapter instead):

    python lab/scripts/fit_selector.py --steps 60 --out runs/selector/gates.safetensors
"""
from __future__ import annotations

import argparse
import json

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.train.calibrate import calibrate_input_centers
from deltamem_agents.datasets.sampler import EpisodeSampler
from lab.selector_fit import SelectorFitConfig, run_selector_fit

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
    cfg = SelectorFitConfig(steps=args.steps, batch=args.batch, lr=args.lr, threshold=args.threshold, hi=args.hi,
                            lo=args.lo, fit_bias_init=args.fit_bias_init, heldout=args.heldout, init_gates=args.init,
                            report_thresholds=tuple(float(x) for x in args.report_thresholds.split(",")),
                            value_kinds=tuple(KINDS))
    rows = run_selector_fit(model, tok, renderer, cfg, args.out)
    print(json.dumps({"args": vars(args), **rows[0]}), flush=True)
    for row in rows[1:]:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
