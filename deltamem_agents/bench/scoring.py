"""Score one generated answer: LoCoMo's official metric, or normalised containment of a gold alias.

Containment (`datasets.answers.contains_answer`, the memory probe's score) is used for the synthetic suites, bAbI
and the capability items: the answer counts when any gold alias appears in it as whole words. For fact
updates, `says_old` records whether the stale value was given; for variable tracking, `says_decoy` whether the
decoy locker's code was.
"""

from __future__ import annotations

from typing import Any

from .f1 import locomo_score, postprocess
from .items import Item
from ..datasets.answers import contains_answer


def score(item: Item, raw: str) -> dict[str, Any]:
    """{"prediction", "score", ...}: the (post-processed) prediction and its score in [0, 1]."""
    if item.scoring == "locomo":
        cat = int(item.fields["category"])
        pred = postprocess(raw, item.fields.get("options") if cat == 5 else None)
        return {"prediction": pred, "raw_prediction": raw, "score": locomo_score(pred, item.gold, cat)}
    if item.scoring != "contains":
        raise ValueError(f"unknown scoring {item.scoring!r}")
    out: dict[str, Any] = {"prediction": raw, "score": float(contains_answer(raw, item.aliases or (item.gold,)))}
    for field, flag in (("old_value", "says_old"), ("decoy", "says_decoy")):  # a stale update / a decoy locker's code
        if item.fields.get(field):
            out[flag] = contains_answer(raw, [item.fields[field]])
    return out
