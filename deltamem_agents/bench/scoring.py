"""Score one generated answer: LoCoMo's official metric, or normalised containment of a gold alias.

Containment (`bench.probe.contains_answer`, the memory probe's score) is used for the synthetic suites, bAbI
and the capability items: the answer counts when any gold alias appears in it as whole words. For fact
updates, `says_old` records whether the stale value was given.
"""

from __future__ import annotations

from typing import Any

from .f1 import locomo_score, postprocess
from .items import Item
from .probe import contains_answer


def score(item: Item, raw: str) -> dict[str, Any]:
    """{"prediction", "score", ...}: the (post-processed) prediction and its score in [0, 1]."""
    if item.scoring == "locomo":
        cat = int(item.fields["category"])
        pred = postprocess(raw, item.fields.get("options") if cat == 5 else None)
        return {"prediction": pred, "raw_prediction": raw, "score": locomo_score(pred, item.gold, cat)}
    if item.scoring != "contains":
        raise ValueError(f"unknown scoring {item.scoring!r}")
    out: dict[str, Any] = {"prediction": raw, "score": float(contains_answer(raw, item.aliases or (item.gold,)))}
    old = item.fields.get("old_value")
    if old:
        out["says_old"] = contains_answer(raw, [old])
    return out
