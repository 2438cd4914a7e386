"""Which message each written unit (SSW: closed message) belongs to, and the write-gate supervision loss.

The generator knows which messages carry the facts a question can ask about (they mention a fact value).
Gate supervision pulls those messages' mean write gate β̄ towards `hi` and every other message's towards
`lo`, in every layer: writes become selective, so a fact survives the chit-chat after it (the failure in
prior-experiment-recall.md was a gate that wrote everything and so erased everything within ~5 tokens).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from ..core.state import DeltaState
from ..datasets.episode import Episode, fact_values, message_text
from ..runtime.replay import closed_message_ids


def fact_messages(ep: Episode, values: set[str] | None = None) -> set[int]:
    """Indices of history messages that mention a fact value of the episode (asked, other or older), or one
    of `values` (lower-cased) when given."""
    values = fact_values(ep) if values is None else values
    return {i for i, m in enumerate(ep.messages) if any(v in message_text(m).lower() for v in values)}


def asked_values(ep: Episode) -> set[str]:
    """The asked fact's value (lower-cased; empty for episodes without one, e.g. bAbI or tool results)."""
    value = str(ep.meta.get("value", "") or "")
    return {value.lower()} if value else set()


def value_token_labels(ep: Episode, renderer: Any, values: set[str] | None = None) -> dict[int, list[bool]]:
    """For each history message that mentions a fact value (every fact value of the episode, or only
    `values`, lower-cased, e.g. `asked_values(ep)`): which tokens of its rendered block overlap a mention
    (whole-word, case-insensitive), except a `superseded` old value. These are the tokens selective token writes
    should store."""
    values = fact_values(ep) if values is None else values
    return {i: mention_mask(renderer, ep.messages[i], values - superseded(ep, i)) for i in fact_messages(ep, values)}


def mention_mask(renderer: Any, message: dict[str, Any], values: set[str]) -> list[bool]:
    """Per token of the message's rendered block: does it overlap a whole-word, case-insensitive mention of one
    of `values`?"""
    text, _, spans = renderer.message_block(message)
    hits = [(m.start(), m.end()) for v in values
            for m in re.finditer(r"(?<![\w])" + re.escape(v) + r"(?![\w])", text, flags=re.IGNORECASE)]
    return [any(a < e and s < b for s, e in hits) for a, b in spans]


def superseded(ep: Episode, i: int) -> set[str]:
    """Values that message `i` mentions but that are no longer true there (lower-cased): in an update episode, the
    old value from the update message on ("…has replaced {old}…", "…now, not {old}."). Writing such a mention
    stores the old value again, after the new one, so it is not a write target."""
    old = ep.meta.get("old_value")
    return {str(old).lower()} if old and i >= ep.fact_index else set()


def superseded_token_labels(ep: Episode, renderer: Any) -> dict[int, list[bool]]:
    """For each history message that mentions a `superseded` value (an update's re-mention of the old value):
    which tokens of its rendered block overlap that mention. The hard negatives of the write gates: a value token
    like the positives, in a context that says it is no longer true."""
    out = {}
    for i, m in enumerate(ep.messages):
        gone = superseded(ep, i)
        if gone and any(v in message_text(m).lower() for v in gone):
            out[i] = mention_mask(renderer, m, gone)
    return out


def token_classes(mids: list[int], labels: dict[int, list[bool]], n_history: int,
                  hard: dict[int, list[bool]] | None = None) -> list[int]:
    """Per token of one call: 1 = a fact value's token, 2 = a `hard` negative's token (a superseded mention; only
    when `hard` is given), 0 = another history/question token, -1 = left out (unwritten tokens and the answer).
    A written message's tokens are contiguous within a call."""
    out, pos, prev = [], 0, None
    for m in mids:
        pos = pos + 1 if m == prev else 0
        prev = m
        if m < 0 or m > n_history:
            out.append(-1)
            continue
        lab, hl = labels.get(m), (hard or {}).get(m)
        if lab is not None and pos < len(lab) and lab[pos]:
            out.append(1)
        elif hl is not None and pos < len(hl) and hl[pos]:
            out.append(2)
        else:
            out.append(0)
    return out


def token_gate_loss(calls: list[tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[int], DeltaState]],
                    labels: dict[int, list[bool]], n_history: int, hi: float, lo: float,
                    hard: dict[int, list[bool]] | None = None, hard_weight: float = 0.0) -> torch.Tensor | None:
    """Token writes: BCE of each candidate token's β̄ (mean over heads/ranks) against hi (a fact value's
    token) or lo (every other history or question token; the answer is left out). Positives and negatives
    are averaged separately and added (a value is ~1 % of the tokens), then summed over layers.

    With `hard` labels and `hard_weight` > 0 the hard negatives (superseded mentions, target lo) are a third
    class averaged on their own and added with that weight. Among the other negatives they were ~1 token in
    several hundred, so the gates never learned them: v8 writes a re-mentioned old value in 55 % of layer-tokens
    on *training* wordings, although a linear probe on the gate's own input separates it."""
    per_layer: dict[int, list[torch.Tensor]] = {}
    targets: list[torch.Tensor] = []
    for gates, mids, _ in calls:
        if not gates:
            continue
        cls = torch.tensor(token_classes(mids, labels, n_history, hard if hard_weight > 0 else None))
        keep = cls >= 0
        if not bool(keep.any()):
            continue
        targets.append(cls[keep])
        for slot, (g, mask) in gates.items():
            beta = g[0].mean(dim=(-2, -1)).clamp(1e-6, 1 - 1e-6)  # [T]
            per_layer.setdefault(slot, []).append(beta[keep.to(beta.device)])
    if not targets:
        return None
    cls = torch.cat(targets)
    pos, neg, hrd = cls == 1, cls == 0, cls == 2
    t = torch.where(pos, hi, lo).float()
    total = torch.zeros(())
    for betas in per_layer.values():
        b = torch.cat(betas)
        bce = F.binary_cross_entropy(b, t.to(b.device), reduction="none")
        total = total + (bce[neg].mean() if bool(neg.any()) else 0.0) + (bce[pos].mean() if bool(pos.any()) else 0.0)
        if bool(hrd.any()):
            total = total + hard_weight * bce[hrd].mean()
    return total


def gate_loss(calls: list[tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[int], DeltaState]],
              positives: set[int], n_history: int, hi: float, lo: float) -> torch.Tensor | None:
    """Binary cross-entropy of each closed history message's β̄ (mean over heads/ranks) against the soft
    target hi (fact messages) or lo (the rest): averaged over messages, *summed* over layers, so each layer's
    gate logit gets a gradient of (β̄ − target) per message, not one diluted by the number of layers."""
    errs: list[torch.Tensor] = []
    for gates, mids, state_in in calls:
        if not gates:
            continue
        closed = gates[0][1][0]
        ids = closed_message_ids(closed, mids, state_in)
        keep = [j for j, m in enumerate(ids) if m < n_history]  # the question/answer are not history
        if not keep:
            continue
        target = torch.tensor([hi if ids[j] in positives else lo for j in keep])
        per_layer = []
        for g, mask in gates.values():
            beta = g[0][mask[0]].mean(dim=(-2, -1)).clamp(1e-6, 1 - 1e-6)  # [U]
            per_layer.append(F.binary_cross_entropy(beta[keep], target.to(beta.device), reduction="none"))
        errs.append(torch.stack(per_layer))  # [layers, units]
    return torch.cat(errs, dim=1).mean(dim=1).sum() if errs else None
