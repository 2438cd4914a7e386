"""Twin-pair overfit diagnostic: train a fresh centred δ-mem adapter on K twin pairs (same episode, another
value) and print the cross-state gap on those pairs and on 6 held-out pairs every 5 steps.

    python lab/scripts/twin_overfit.py 8 30   # measured: no separation in 30 steps (docs/research-log.md §6)
"""
import json
import sys
import time

import torch

torch.set_num_threads(2)
from deltamem_agents.backbone import load_backbone
from deltamem_agents.core.config import DeltaMemConfig
from deltamem_agents.patching import attach
from deltamem_agents.runtime.render import ChatRenderer, DEFAULT_SYSTEM_PROMPT
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.trainer import run_passes
from deltamem_agents.train.calibrate import calibrate_input_centers
from deltamem_agents.datasets.counterfactual import counterfactual
from deltamem_agents.datasets.sampler import EpisodeSampler
K, STEPS = int(sys.argv[1]), int(sys.argv[2])
m, tok = load_backbone(); m.to(torch.bfloat16)
ad = attach(m, DeltaMemConfig(write_granularity="message_mean", beta_bias_init=-1.0, center_inputs=True))
r = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
s = EpisodeSampler(tok, value_kinds=["colour", "food", "sport", "drink"], mix={"fact": 1.0}, in_window_frac=0.0)
pol = WindowPolicy(budget=128, reserve=48)
def pair(seed, split):
    ep = s.generate_one(seed, split, mix={"fact": 1.0}, distance_range=(60, 60))
    return build_passes(ep, r, pol), build_passes(counterfactual(ep, seed), r, pol)
train = [pair(i, "train") for i in range(K)]
held = [pair(1000 + i, "heldout") for i in range(6)]
calibrate_input_centers(m, [p for ab in train[:8] for p in ab])
opt = torch.optim.AdamW(ad.parameters(), lr=3e-3)
def gap(pa, pb):
    la, _, sa, _ = run_passes(m, pa); lb, _, sb, _ = run_passes(m, pb)
    lab = run_passes(m, pa.read_only(), state=sb.rebased())[0]
    lba = run_passes(m, pb.read_only(), state=sa.rebased())[0]
    g = ((lab - la) + (lba - lb)) / 2
    loss = la + lb + torch.relu(1 - (lab - la)) + torch.relu(1 - (lba - lb))
    return loss, g.item(), ((la + lb) / 2).item()
t0 = time.time()
for step in range(STEPS):
    opt.zero_grad()
    gs = []
    for pa, pb in train:
        loss, g, own = gap(pa, pb)
        (loss / K).backward(); gs.append(g)
    opt.step()
    if step % 5 == 4 or step == STEPS - 1:
        with torch.no_grad():
            hg = [gap(pa, pb)[1] for pa, pb in held]
        print(json.dumps({"K": K, "step": step + 1, "train_gap": sum(gs) / len(gs), "heldout_gap": sum(hg) / len(hg),
                          "s": round(time.time() - t0)}), flush=True)
