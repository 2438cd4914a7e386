"""Counterfactual twins: the same episode with the asked value swapped for another value of the same kind.

A twin shares every token of the question and of the visible window with its original unless the value
itself is in the window, so a model that answers both correctly *must* read the value from its memory
state. Training on (episode, twin) pairs and contrasting each episode's answer under its twin's state is
the project's guard against the failure in prior-experiment-inwindow.md (a "memory" that is really a
task fine-tune): priors cannot tell the twins apart, only the state can.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from .distractors import faker_for
from .episode import Episode, answer_text
from .pools import article
from .synthetic import _aliases, _value
from .templates import relation

__all__ = ["counterfactual", "supports_counterfactual"]

_KINDS = ("fact", "update", "multi", "in_window")


def supports_counterfactual(ep: Episode) -> bool:
    return ep.kind in _KINDS and "relation" in ep.meta and not ep.meta["relation"].startswith("tool_")


def _sub(text: str, old: str, new: str) -> str:
    for art in ("a", "an", "A", "An"):  # keep the indefinite article right ("a Kia", "an Audi")
        want = article(new)
        want = want[:1].upper() + want[1:] if art[0].isupper() else want
        text = re.sub(r"(?<![\w])" + art + " " + re.escape(old) + r"(?![\w])", f"{want} {new}", text)
    pat = re.compile(r"(?<![\w])" + re.escape(old) + r"(?![\w])")
    text = pat.sub(new, text)
    cap_old, cap_new = old[:1].upper() + old[1:], new[:1].upper() + new[1:]
    if cap_old != old:
        text = re.sub(r"(?<![\w])" + re.escape(cap_old) + r"(?![\w])", cap_new, text)
    return text


def counterfactual(ep: Episode, seed: int) -> Episode:
    """The twin of `ep` (kinds fact/update/multi/in_window) whose asked value is a different value.

    Raises ValueError for episodes without a known relation (tool results, bAbI).
    """
    if not supports_counterfactual(ep):
        raise ValueError(f"no counterfactual for episode kind {ep.kind!r}")
    rel = relation(ep.meta["relation"])
    old = ep.meta["value"]
    taken = {str(v).lower() for v in (ep.meta.get("values") or [])} | {old.lower()}
    if ep.meta.get("old_value"):
        taken.add(ep.meta["old_value"].lower())
    r = random.Random(f"counterfactual:{seed}")
    fake = faker_for(r.getrandbits(32))
    new = old
    for _ in range(64):
        new = _value(rel.value_kind, r, fake)
        if new.lower() not in taken and old.lower() not in new.lower() and new.lower() not in old.lower():
            break
    else:
        raise ValueError(f"could not draw a different value for {rel.key!r}")
    messages = tuple({**m, "content": _sub(m["content"], old, new)} if isinstance(m.get("content"), str) else m
                     for m in ep.messages)
    meta = {**ep.meta, "value": new, "counterfactual_of": old}
    if "values" in meta:
        meta["values"] = [new if v == old else v for v in meta["values"]]
    return replace(ep, messages=messages, answer=answer_text(new), aliases=_aliases(new), meta=meta)
