"""Twin gap (nats) and pairwise accuracy of a saved adapter on held-out twin pairs, with the oracle's writes
(only the value's tokens are candidates) vs the adapter's own selection (every history token is a candidate).

    python lab/scripts/selective_gap.py runs/sel-v0-no_lambda/adapter --distance 60 --budget 128
"""
from __future__ import annotations

import argparse
import json

import torch

from deltamem_agents.backbone import load_backbone
from deltamem_agents.patching.adapter_io import load_adapter
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.datasets.sampler import EpisodeSampler

from oracle_write import KINDS, evaluate, make_pairs  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("adapter")
ap.add_argument("--n", type=int, default=12)
ap.add_argument("--distance", type=int, default=60)
ap.add_argument("--budget", type=int, default=128)
ap.add_argument("--modes", default="oracle,all")
args = ap.parse_args()
torch.set_num_threads(1)
model, tok = load_backbone()
model.to(torch.bfloat16)
load_adapter(model, args.adapter)
r = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
s = EpisodeSampler(tok, value_kinds=KINDS, mix={"fact": 1.0}, in_window_frac=0.0)
for mode in args.modes.split(","):
    pairs = make_pairs(s, r, WindowPolicy(budget=args.budget, reserve=48), args.n, "heldout", 100_000, mode,
                       args.distance)
    print(json.dumps({"mode": mode, "distance": args.distance, **{k: round(v, 3) for k, v in evaluate(model, pairs).items()}}), flush=True)
