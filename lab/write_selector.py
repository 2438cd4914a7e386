"""Fit the write gates as a token selector: which tokens selective token writes (`write_threshold`) store.

Only `beta_proj`/`beta_bias` train, on the token-level gate supervision of `train/gates.py` (a fact value's
tokens → β̄ ≈ hi, every other history/question token → β̄ ≈ lo); the layer inputs are detached, so a step costs
about one forward pass. `selector_report` measures the result on held-out episodes: per layer, the share of
value tokens that reach the threshold (recall) and of other tokens that do (false-write rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from tqdm import tqdm

from deltamem_agents.datasets.episode import Episode
from deltamem_agents.patching.forward import forward_with_state
from deltamem_agents.runtime.render import ChatRenderer
from deltamem_agents.runtime.window import WindowPolicy
from deltamem_agents.runtime.replay import EpisodePasses, build_passes
from deltamem_agents.train.gates import superseded_token_labels, token_classes, token_gate_loss, value_token_labels


def gate_passes(model: Any, p: EpisodePasses, grad: bool) -> list[Any]:
    """Every pass of an episode with its gates captured (inputs detached), the state carried as at runtime."""
    adapter = model.deltamem
    dev = adapter.layers[0].beta_bias.device
    st = adapter.zero_state(1, dev)
    calls = []
    for ids, mids in p.write_passes + [(p.read_ids, p.read_mids)]:
        with torch.set_grad_enabled(grad):
            out = forward_with_state(model, torch.tensor([ids], device=dev), st, skip_lm_head=True,
                                     message_ids=torch.tensor([mids], device=dev), detach_inputs=True,
                                     use_cache=False, capture_gates=True)
        calls.append((out.gates, mids, st))
        st = out.state.detach()
    return calls


def fit_write_gates(model: Any, renderer: ChatRenderer, episodes: Iterable[tuple[Episode, WindowPolicy]], *,
                    steps: int, batch: int = 4, lr: float = 1e-2, hi: float = 0.9, lo: float = 0.01,
                    superseded_weight: float = 0.0, progress: bool = True) -> list[float]:
    """Train only the gate parameters with `token_gate_loss` (with `superseded_weight` > 0: an update's re-mentions
    of the old value as a negative class of their own); returns the loss per step."""
    adapter = model.deltamem
    gate_params = [p for n, p in adapter.named_parameters() if n.endswith(("beta_proj", "beta_bias"))]
    others = [p for n, p in adapter.named_parameters() if not n.endswith(("beta_proj", "beta_bias"))]
    saved = [p.requires_grad for p in others]
    for p in others:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(gate_params, lr=lr, weight_decay=0.0)
    it = iter(episodes)
    losses: list[float] = []
    try:
        for _ in tqdm(range(steps), desc="fit write gates", disable=not progress):
            opt.zero_grad()
            total = 0.0
            for _ in range(batch):
                ep, pol = next(it)
                p = build_passes(ep, renderer, pol)
                hard = superseded_token_labels(ep, renderer) if superseded_weight else None
                loss = token_gate_loss(gate_passes(model, p, True), value_token_labels(ep, renderer), len(ep.messages),
                                       hi, lo, hard, superseded_weight)
                if loss is not None:
                    (loss / batch).backward()
                    total += loss.item() / batch
            opt.step()
            losses.append(total)
    finally:
        for p, r in zip(others, saved):
            p.requires_grad_(r)
    return losses


@torch.no_grad()
def fold_linear_gate(layer: Any, weight: torch.Tensor, bias: float, threshold: float) -> None:
    """Make one δ-mem layer's write gate apply a linear decision on its input x: every rank-wise row becomes
    `weight` and the bias is shifted so that the mean gate β̄ ≥ `threshold` (the layer's selective-write τ) exactly
    when weight·x + bias ≥ 0. The gate's strength on a written token is then sigmoid(weight·x + bias + logit τ).
    Used to install a gate fitted outside SGD (lab/scripts/fit_gates_convex.py, docs/research-log.md §12m)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    w = weight.detach().to(layer.beta_proj.dtype).reshape(-1)
    if w.numel() != layer.beta_proj.shape[1]:
        raise ValueError(f"weight has {w.numel()} entries; the layer's input has {layer.beta_proj.shape[1]}")
    b = float(bias) + math.log(threshold / (1.0 - threshold))
    if layer.input_center is not None:  # the gate sees x − c
        b += float(w @ layer.input_center.to(w.dtype))
    layer.beta_proj.copy_(w.expand_as(layer.beta_proj))
    layer.beta_bias.fill_(b)


@dataclass
class SelectorReport:
    recall: list[float]  # per layer: value tokens with β̄ >= threshold
    false_rate: list[float]  # per layer: other history/question tokens with β̄ >= threshold
    n_pos: int
    n_neg: int


@torch.no_grad()
def selector_report(model: Any, renderer: ChatRenderer, episodes: Iterable[tuple[Episode, WindowPolicy]],
                    threshold: float) -> SelectorReport:
    hits: dict[int, list[int]] = {}
    n_pos = n_neg = 0
    for ep, pol in episodes:
        p = build_passes(ep, renderer, pol)
        labels = value_token_labels(ep, renderer)
        for gates, mids, _ in gate_passes(model, p, False):
            t = torch.tensor(token_classes(mids, labels, len(ep.messages)))
            n_pos += int((t == 1).sum())
            n_neg += int((t == 0).sum())
            for slot, (g, _) in gates.items():
                sel = g[0].mean(dim=(-2, -1)).cpu() >= threshold
                h = hits.setdefault(slot, [0, 0])
                h[0] += int((sel & (t == 1)).sum())
                h[1] += int((sel & (t == 0)).sum())
    slots = sorted(hits)
    return SelectorReport([hits[s][0] / max(1, n_pos) for s in slots], [hits[s][1] / max(1, n_neg) for s in slots],
                          n_pos, n_neg)
