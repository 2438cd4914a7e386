"""Could a write gate tell an update's new value from the old value it re-mentions? (docs/research-log.md §12k)

`update_gates.py` found that on held-out update wordings the shipped gates write the new value in only about half
of the layer-tokens and the re-mentioned old value in more than half — and on *training* wordings still write the
re-mentioned old value in 55 %. Each layer's gate is a linear logit of that layer's input x_t at the token. This
script asks whether that is a limit of the gate's inputs or of its training: per layer, it fits a logistic probe
on the update episodes of the *train* split (labels as the trainer's: the fact's value and the update's new value
→ write, the update's re-mention of the old value → do not write) and scores it on the *held-out* split (unseen
wordings and seeds), for three inputs:

  x_t                 what the gate sees now;
  [x_t, x_{t-1}]      plus the previous token (a causal, streaming-friendly context);
  [x_t, x̄_{<t}]       plus the mean of the message's earlier tokens.

The same episodes' actual gates (β̄ ≥ τ) are scored alongside. A probe that separates the held-out mentions well
where the trained gate does not says the gate's training, not its input, is what fails; a probe that fails too
says the gate needs other inputs.

    python lab/scripts/gate_probe.py --adapter default --n-train 150 --n-heldout 100
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from deltamem_agents.bench.run_probe import kind_episodes
from deltamem_agents.chat.loading import load_model
from deltamem_agents.patching import forward_with_state, get_adapter
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import mention_mask

from update_gates import mention_targets, token_positions  # noqa: E402  (sibling script)

FEATURES = ("x_t", "x_t + x_t-1", "x_t + message mean")


def collect(model, renderer, policy, eps):
    """Per mention token: (label, kind, per-layer features for each FEATURES entry, per-layer gate β̄)."""
    adapter = get_adapter(model)
    out = []
    for ep in tqdm(eps, desc="episodes"):
        targets = mention_targets(ep)  # the trainer's labels: only the re-mentioned old value is "do not write"
        p = build_passes(ep, renderer, policy)
        st = adapter.zero_state(1, torch.device("cpu"))
        for ids, mids in p.write_passes:
            with torch.no_grad():
                o = forward_with_state(model, torch.tensor([ids]), st, message_ids=torch.tensor([mids]),
                                       skip_lm_head=True, use_cache=False, capture_inputs=True)
            st = o.state
            xs = torch.stack([o.inputs[i][0].float() for i in range(len(adapter.layers))])  # [L, T, d]
            gates = torch.stack([o.gates[i][0][0].float().mean(dim=(-2, -1)) for i in range(len(adapter.layers))])
            index = token_positions(mids)
            for m, spec in targets.items():
                cols_m = [t for t, (mm, _) in enumerate(index) if mm == m]
                for kind, value in spec:
                    label = int(kind != "update: old value")
                    mask = mention_mask(renderer, ep.messages[m], {value})
                    for t, (mm, j) in enumerate(index):
                        if mm != m or j >= len(mask) or not mask[j] or t == 0:
                            continue
                        before = [c for c in cols_m if c < t] or [t - 1]
                        feats = (xs[:, t], torch.cat([xs[:, t], xs[:, t - 1]], -1),
                                 torch.cat([xs[:, t], xs[:, before].mean(1)], -1))
                        out.append((label, kind, [f.numpy() for f in feats], gates[:, t].numpy()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--n-train", type=int, default=150)
    ap.add_argument("--n-heldout", type=int, default=100)
    ap.add_argument("--distance", type=int, default=150)
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--value-kinds", default="colour,food,sport,drink")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(adapter=a.adapter)
    model.float()
    tau = get_adapter(model).config.write_threshold or 0.5
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    policy = WindowPolicy(budget=a.budget, reserve=48)
    kinds = a.value_kinds.split(",")
    train = collect(model, renderer, policy, kind_episodes(tok, a.n_train, a.distance, 1, "train", kinds, "update"))
    held = collect(model, renderer, policy, kind_episodes(tok, a.n_heldout, a.distance, 0, "heldout", kinds, "update"))
    ytr, yte = np.array([r[0] for r in train]), np.array([r[0] for r in held])
    kinds_te = [r[1] for r in held]
    L = len(train[0][3])
    print(f"adapter {a.adapter}, τ = {tau}; mention tokens: train {len(train)} ({ytr.mean():.2f} write), "
          f"held-out {len(held)} ({yte.mean():.2f} write)\n")
    print("| gate input | held-out AUC (mean over layers) | best layer AUC | held-out write rate: fact / new / re-mentioned old (mean over layers) |")
    print("|---|---|---|---|")

    def rates(pred):  # [L, N] bool -> per kind mean
        return " / ".join(f"{pred[:, [k == name for k in kinds_te]].mean():.2f}"
                          for name in ("fact: old value", "update: new value", "update: old value"))

    g = np.stack([r[3] for r in held], 1)  # [L, N]
    aucs = [roc_auc_score(yte, g[l]) for l in range(L)]
    print(f"| trained gate β̄ (≥ τ) | {np.mean(aucs):.3f} | {max(aucs):.3f} (layer {int(np.argmax(aucs))}) | {rates(g >= tau)} |")
    for f, name in enumerate(FEATURES):
        aucs, preds = [], []
        for l in range(L):
            Xtr = np.stack([r[2][f][l] for r in train])
            Xte = np.stack([r[2][f][l] for r in held])
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced"))
            clf.fit(Xtr, ytr)
            prob = clf.predict_proba(Xte)[:, 1]
            aucs.append(roc_auc_score(yte, prob))
            preds.append(prob >= 0.5)
        print(f"| probe on {name} | {np.mean(aucs):.3f} | {max(aucs):.3f} (layer {int(np.argmax(aucs))}) | "
              f"{rates(np.stack(preds))} |")


if __name__ == "__main__":
    main()
