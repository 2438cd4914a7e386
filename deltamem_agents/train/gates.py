"""Which message each written unit (SSW: closed message) belongs to, and the write-gate supervision loss.

The generator knows which messages carry the facts a question can ask about (they mention a fact value).
Gate supervision pulls those messages' mean write gate β̄ towards `hi` and every other message's towards
`lo`, in every layer: writes become selective, so a fact survives the chit-chat after it (the failure in
prior-experiment-recall.md was a gate that wrote everything and so erased everything within ~5 tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.state import DeltaState
from ..datasets.episode import Episode, message_text


def closed_message_ids(closed: torch.Tensor, mids: list[int], state_in: DeltaState) -> list[int]:
    """Message index of each closed unit of one SSW call (batch row 0), in the order the layer wrote them:
    the carried open message first (if this call closed it), then the call's new messages."""
    first_ids = sorted({m for m in mids if m >= 0})
    carried = int(state_in.pend_id[0]) if int(state_in.pend_count[0]) > 0 else None
    order = ([carried] if carried is not None and carried not in first_ids else []) + first_ids
    return [m for m, c in zip(order, closed.tolist()) if c]


def fact_messages(ep: Episode) -> set[int]:
    """Indices of history messages that mention a fact value of the episode (asked, other or older)."""
    values = {str(ep.meta.get("value", ""))} | {str(v) for v in ep.meta.get("values") or []}
    if ep.meta.get("old_value"):
        values.add(str(ep.meta["old_value"]))
    values = {v.lower() for v in values if v}
    return {i for i, m in enumerate(ep.messages) if any(v in message_text(m).lower() for v in values)}


def gate_loss(calls: list[tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[int], DeltaState]],
              positives: set[int], n_history: int, hi: float, lo: float) -> torch.Tensor | None:
    """Mean squared error of each closed history message's β̄ (over heads/ranks) against hi/lo, all layers."""
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
        for g, mask in gates.values():
            beta = g[0][mask[0]].mean(dim=(-2, -1))  # [U]
            errs.append((beta[keep] - target.to(beta.device)) ** 2)
    return torch.cat(errs).mean() if errs else None
