"""Refit only the write gates of a trained adapter with update-aware labels (fact updates; results §12c).

The shipped adapter's selector was fitted (recipe stage 2) with an update's *old* value labelled as a write target
wherever it appears, so "Scratch that, {new} has replaced {old} as my top sport." writes the old value again,
after the new one. `train/gates.py::superseded` now leaves it out. This script continues the adapter's own gates
(not reset) on facts + updates with those labels, everything else frozen, and reports per held-out update
episode group how often each layer writes (β̄ ≥ the adapter's threshold):
  stated-old  the old value where it was stated (should stay written)
  new         the new value in the update (should be written)
  superseded  the old value named in or after the update (should not be written)
Then measure the saved adapter with the update probe and the fact probe (commands in docs/research-log.md §12c).

    PYTHONPATH=. python lab/scripts/refit_update_gates.py --out runs/v2-gates-upd --steps 40 --lr 3e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from deltamem_agents.chat.loading import load_model
from deltamem_agents.patching.adapter_io import save_adapter
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import token_classes, value_token_labels
from deltamem_agents.datasets.sampler import EpisodeSampler
from lab.write_selector import fit_write_gates, gate_passes

KINDS = ["colour", "food", "sport", "drink"]


def group_labels(ep, renderer) -> dict[str, dict[int, list[bool]]]:
    """Token masks of the three groups above (a value mention's tokens, per message)."""
    old, new = ep.meta["old_value"].lower(), ep.meta["value"].lower()
    bare = dataclasses.replace(ep, meta={k: v for k, v in ep.meta.items() if k != "old_value"})
    olds = value_token_labels(bare, renderer, {old})
    return {"stated-old": {i: m for i, m in olds.items() if i < ep.fact_index},
            "superseded": {i: m for i, m in olds.items() if i >= ep.fact_index},
            "new": value_token_labels(bare, renderer, {new})}


@torch.no_grad()
def write_rates(model, renderer, held, threshold: float) -> dict[str, float]:
    """Share of each group's tokens written (β̄ ≥ threshold), averaged over layers."""
    hit = {g: [0, 0] for g in ("stated-old", "new", "superseded", "other")}
    for ep, pol in held:
        groups = group_labels(ep, renderer)
        p = build_passes(ep, renderer, pol)
        for gates, mids, _ in gate_passes(model, p, False):
            cls = {g: torch.tensor(token_classes(mids, lab, len(ep.messages))) for g, lab in groups.items()}
            labelled = sum((c == 1).long() for c in cls.values()) > 0
            other = (next(iter(cls.values())) >= 0) & ~labelled
            for _, (g, _) in gates.items():
                sel = g[0].mean(dim=(-2, -1)).cpu() >= threshold
                for name, c in cls.items():
                    hit[name][0] += int((sel & (c == 1)).sum())
                    hit[name][1] += int((c == 1).sum())
                hit["other"][0] += int((sel & other).sum())
                hit["other"][1] += int(other.sum())
    return {g: round(a / max(1, b), 4) for g, (a, b) in hit.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--update-share", type=float, default=0.5)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--superseded-weight", type=float, default=0.0,
                    help="superseded mentions as a negative class of their own with this weight (0: among the others)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, tok = load_model(None, a.adapter)
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    tau = model.deltamem.config.write_threshold
    sampler = EpisodeSampler(tok, seed=a.seed, total_steps=a.steps, value_kinds=KINDS, in_window_frac=0.0,
                             mix={"fact": 1 - a.update_share, "update": a.update_share}, budget_range=(128, 128),
                             distance_start=0, distance_end=180)
    pol = WindowPolicy(budget=128, reserve=48)
    held = [(sampler.generate_one(20_000 + i, "heldout", mix={"update": 1.0}, distance_range=(150, 150)), pol)
            for i in range(a.heldout)]
    before = write_rates(model, renderer, held, tau)
    print("before", json.dumps(before))
    episodes = (sampler.sample(step, micro) for step in range(10**6) for micro in range(a.batch))
    losses = fit_write_gates(model, renderer, episodes, steps=a.steps, batch=a.batch, lr=a.lr,
                             superseded_weight=a.superseded_weight)
    after = write_rates(model, renderer, held, tau)
    print("after ", json.dumps(after))
    info = {"from": str(a.adapter),
            "refit": "write gates only, update-aware labels (lab/scripts/refit_update_gates.py)",
            "steps": a.steps, "batch": a.batch, "lr": a.lr, "update_share": a.update_share, "seed": a.seed,
            "superseded_weight": a.superseded_weight,
            "loss_first": losses[:3], "loss_last": losses[-3:],
            "write_rates_before": before, "write_rates_after": after}
    save_adapter(model, a.out, info=info)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
