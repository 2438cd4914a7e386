"""Fit each layer's write gate to convergence as a convex problem, then fold it into the adapter (docs/research-log.md §12m).

`gate_probe.py` showed that a linear function of the gate's own input x_t separates held-out "write" mentions from
re-mentioned old values (AUC 0.92) while the trained gates do not (0.51), and that adding the superseded mentions
as a class to the SGD gate loss collapsed every value write (§12k). This script solves the gate's problem
directly, per layer, with a logistic regression to convergence on standardised inputs:

  positives   a fact value's tokens (the trainer's labels: `value_token_labels`, superseded mentions left out);
  superseded  an update's re-mention of the old value (`superseded_token_labels`), a negative class of its own;
  others      every other written history/question token (subsampled);
  stories     with `--babi-stories`: every token of bAbI train stories (tasks `--babi-tasks`) shown whole in the
              window (subsampled).

Each class gets its own total weight (positives 1, superseded `--superseded-weight`, others 1, stories
`--story-weight`). The decision threshold per layer is then set so that the share of *other* training tokens
written equals the adapter's own false-write rate at that layer (the same budget of junk writes; `--false-rate`
overrides it), and raised if needed so that no more of the stories is written than the adapter writes. The fitted logit z
(w·(x − μ)/σ + b − threshold) is folded into the layer's gate with every rank-wise row equal
(`train/write_selector.fold_linear_gate`), so β̄ ≥ τ exactly when z ≥ 0 and the runtime's selective writes
(β̄ ≥ τ) apply the fitted decision; a written token's strength is sigmoid(z + logit τ). Nothing else changes.

Inputs are captured once, with the source adapter's gates writing the state (the residual stream holds its
reads), so the fit is on the source adapter's distribution; `update_gates.py` on the saved adapter measures the
real effect. With `--cache`, the episodes' capture and the stories' capture are kept in two .npz files (the
stories' next to it, named by count and number of tasks) and reused when their settings match.

    PYTHONPATH=. python lab/scripts/fit_gates_convex.py --out runs/v8-cvx --n-train 300
    DELTAMEM_BABI_DIR=../shared/data/babi/en PYTHONPATH=. python lab/scripts/fit_gates_convex.py \
        --out runs/v8-cvx4-sw10 --false-rate 0.01 --babi-stories 12 --babi-tasks all --story-weight 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from deltamem_agents.bench.run_probe import kind_episodes
from deltamem_agents.chat.loading import load_model
from deltamem_agents.datasets.babi import babi_episodes, parse_tasks
from deltamem_agents.patching import forward_with_state, get_adapter
from deltamem_agents.patching.adapter_io import save_adapter
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT, ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import build_passes
from deltamem_agents.train.gates import superseded_token_labels, token_classes, value_token_labels
from deltamem_agents.datasets.sampler import EpisodeSampler
from lab.write_selector import fold_linear_gate

KINDS = ["colour", "food", "sport", "drink"]


@torch.no_grad()
def collect(model, renderer, items, keep_other: float, seed: int, story: bool = False):
    """Per layer: inputs X [N, d] (fp16) of the kept tokens; their classes y [N] (0 other, 1 value, 2 superseded,
    3 a story's token: every token of `story` episodes, e.g. bAbI) and the source gates' β̄ [L, N]. Passes run as
    at runtime (state carried, writes by the source gates)."""
    adapter = get_adapter(model)
    L = len(adapter.layers)
    rng = np.random.default_rng(seed)
    xs: list[list[np.ndarray]] = [[] for _ in range(L)]
    ys, gs = [], []
    for ep, pol in tqdm(items, desc="capture"):
        p = build_passes(ep, renderer, pol)
        labels, hard = value_token_labels(ep, renderer), superseded_token_labels(ep, renderer)
        st = adapter.zero_state(1, torch.device("cpu"))
        for ids, mids in p.write_passes + [(p.read_ids, p.read_mids)]:
            o = forward_with_state(model, torch.tensor([ids]), st, message_ids=torch.tensor([mids]),
                                   skip_lm_head=True, use_cache=False, capture_inputs=True)
            st = o.state
            if not o.gates:
                continue
            cls = np.array(token_classes(mids, labels, len(ep.messages), hard))
            keep = (cls > 0) | ((cls == 0) & (rng.random(len(cls)) < keep_other))
            if story:
                cls = np.where(cls >= 0, 3, cls)
            if not keep.any():
                continue
            ys.append(cls[keep])
            gs.append(np.stack([o.gates[s][0][0].mean(dim=(-2, -1)).float().numpy()[keep] for s in range(L)]))
            for s in range(L):
                xs[s].append(o.inputs[s][0].float().numpy()[keep].astype(np.float16))
    return [np.concatenate(x) for x in xs], np.concatenate(ys), np.concatenate(gs, 1)


def rates(written: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """written [L, N] bool -> share written per class, mean over layers."""
    return {name: round(float(written[:, y == c].mean()), 4) for c, name in ((1, "value"), (2, "superseded"),
                                                                          (0, "other"), (3, "story")) if (y == c).any()}


def fit_layer(X: np.ndarray, y: np.ndarray, sup_weight: float, C: float, story_weight: float = 1.0):
    scaler = StandardScaler().fit(X.astype(np.float32))
    Z = scaler.transform(X.astype(np.float32))
    w = np.zeros(len(y))
    for c, total in ((0, 1.0), (1, 1.0), (2, sup_weight), (3, story_weight)):
        if (y == c).any():
            w[y == c] = total / (y == c).sum()
    clf = LogisticRegression(C=C, max_iter=3000).fit(Z, (y == 1).astype(int), sample_weight=w * len(y) / w.sum())
    return scaler, clf


def rate_threshold(z: np.ndarray, rate: float) -> float:
    """The decision value above which a share `rate` of the scores `z` lies (none for rate 0)."""
    return float(np.quantile(z, 1.0 - rate)) if rate > 0 else float(z.max())


def cache_key(a) -> str:
    return f"{a.adapter}|{a.n_train}|{a.n_check}|{a.keep_other}|{a.seed}"


def story_cache_key(a) -> str:
    return f"{a.adapter}|{a.keep_other}|{a.seed}|babi{a.babi_stories}|tasks{','.join(map(str, a.babi_tasks))}"


def cached(path: Path | None, key: str, capture):
    """`capture()`'s arrays (a dict), kept in `path` (.npz) under `key` and reused when the key matches."""
    if path and path.exists():
        z = np.load(path)
        if z["meta"].item() != key:
            raise SystemExit(f"{path} holds another capture ({z['meta'].item()}); remove it or pass another --cache")
        return {k: z[k] for k in z.files if k != "meta"}
    out = capture()
    if path:
        np.savez(path, meta=np.array(key), **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=300, help="training-split episodes (facts and updates 50/50)")
    ap.add_argument("--n-check", type=int, default=60, help="held-out episodes of each kind (a seed the probes do not use)")
    ap.add_argument("--superseded-weight", type=float, default=1.0)
    ap.add_argument("--C", type=float, default=0.05)
    ap.add_argument("--false-rate", type=float, default=None, help="share of other tokens to write (default: the source's)")
    ap.add_argument("--keep-other", type=float, default=0.3, help="share of other tokens kept for the fit")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="keep the captured inputs here (.npz) and reuse them")
    ap.add_argument("--babi-stories", type=int, default=0,
                    help="also capture this many bAbI *train* stories per task (whole story in the window) as "
                         "negatives of their own, and cap each layer's write rate on them at the source's")
    ap.add_argument("--babi-tasks", type=parse_tasks, default=(1, 2, 3, 5, 6, 7),
                    help="the tasks of --babi-stories: a comma list or 'all' (default 1,2,3,5,6,7)")
    ap.add_argument("--story-weight", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(adapter=a.adapter)
    model.float()
    adapter = get_adapter(model)
    tau = adapter.config.write_threshold
    if not tau:
        raise SystemExit("the adapter has no write threshold: selective token writes are what this fits")
    renderer = ChatRenderer(tok, DEFAULT_SYSTEM_PROMPT)
    L = len(adapter.layers)

    def capture_main():
        sampler = EpisodeSampler(tok, seed=a.seed, total_steps=a.n_train, value_kinds=KINDS, in_window_frac=0.0,
                                 mix={"fact": 0.5, "update": 0.5}, budget_range=(128, 128), distance_start=0,
                                 distance_end=180)
        train = [sampler.sample(i, 0) for i in range(a.n_train)]
        pol = WindowPolicy(budget=128, reserve=48)
        check = [(ep, pol) for kind in ("update", "fact")
                 for ep in kind_episodes(tok, a.n_check, 150, 7, "heldout", KINDS, kind)]
        Xtr, ytr, gtr = collect(model, renderer, train, a.keep_other, a.seed)
        Xck, yck, gck = collect(model, renderer, check, 1.0, a.seed + 1)
        return {"ytr": ytr, "gtr": gtr, "yck": yck, "gck": gck,
                **{f"xtr{s}": x for s, x in enumerate(Xtr)}, **{f"xck{s}": x for s, x in enumerate(Xck)}}

    def capture_stories():
        stories = [(ep, WindowPolicy(budget=8192, reserve=48))
                   for ep in babi_episodes(None, tasks=a.babi_tasks, split="train", max_items=a.babi_stories,
                                           seed=a.seed)]
        Xs, ys, gs = collect(model, renderer, stories, a.keep_other, a.seed + 2, story=True)
        return {"ys": ys, "gs": gs, **{f"xs{s}": x for s, x in enumerate(Xs)}}

    z = cached(a.cache, cache_key(a), capture_main)  # the source adapter's captured inputs
    Xtr, ytr, gtr = [z[f"xtr{s}"] for s in range(L)], z["ytr"], z["gtr"]
    Xck, yck, gck = [z[f"xck{s}"] for s in range(L)], z["yck"], z["gck"]
    if a.babi_stories:
        story_cache = a.cache.with_name(f"{a.cache.stem}-stories{a.babi_stories}-{len(a.babi_tasks)}t.npz") \
            if a.cache else None
        zs = cached(story_cache, story_cache_key(a), capture_stories)
        Xtr = [np.concatenate([x, zs[f"xs{s}"]]) for s, x in enumerate(Xtr)]
        ytr, gtr = np.concatenate([ytr, zs["ys"]]), np.concatenate([gtr, zs["gs"]], 1)
    print(f"tokens: train {len(ytr)} (value {(ytr == 1).sum()}, superseded {(ytr == 2).sum()}), "
          f"check {len(yck)} (value {(yck == 1).sum()}, superseded {(yck == 2).sum()})")
    before = {"train": rates(gtr >= tau, ytr), "check": rates(gck >= tau, yck)}
    print("source gates written:", json.dumps(before))
    ztr, zck, thresholds = np.zeros((L, len(ytr))), np.zeros((L, len(yck))), []
    for s in tqdm(range(L), desc="fit layers"):
        scaler, clf = fit_layer(Xtr[s], ytr, a.superseded_weight, a.C, a.story_weight)
        ztr[s] = clf.decision_function(scaler.transform(Xtr[s].astype(np.float32)))
        zck[s] = clf.decision_function(scaler.transform(Xck[s].astype(np.float32)))
        fr = a.false_rate if a.false_rate is not None else float((gtr[s][ytr == 0] >= tau).mean())
        thr = rate_threshold(ztr[s][ytr == 0], fr)
        if (ytr == 3).any():  # never write more of a story than the source did
            thr = max(thr, rate_threshold(ztr[s][ytr == 3], float((gtr[s][ytr == 3] >= tau).mean())))
        thresholds.append(thr)
        wz = clf.coef_[0] / scaler.scale_  # the decision on raw x: wz·x + bias ≥ 0
        fold_linear_gate(adapter.layers[s], torch.from_numpy(wz).float(),
                         float(clf.intercept_[0] - wz @ scaler.mean_) - thr, tau)
    thr = np.array(thresholds)[:, None]
    after = {"train": rates(ztr >= thr, ytr), "check": rates(zck >= thr, yck)}
    print("fitted gates written (on the source's inputs):", json.dumps(after))
    info = {"from": str(a.adapter), "refit": "write gates only: convex per-layer fit (lab/scripts/fit_gates_convex.py)",
            "n_train": a.n_train, "superseded_weight": a.superseded_weight, "C": a.C, "false_rate": a.false_rate,
            "keep_other": a.keep_other, "seed": a.seed, "babi_stories": a.babi_stories,
            "babi_tasks": list(a.babi_tasks) if a.babi_stories else [],
            "written_before": before, "written_after": after,
            "thresholds": [round(t, 4) for t in thresholds]}
    save_adapter(model, a.out, info=info)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
