"""Counterfactual twins differ from their episode only in the asked value."""

from __future__ import annotations

import pytest

from deltamem_agents.datasets.counterfactual import counterfactual, supports_counterfactual
from deltamem_agents.datasets.synthetic import generate


def _episodes(split: str):
    return generate(60, seed=11, split=split, mix={"fact": 1, "update": 1, "multi": 1}, distance_range=(40, 120))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_twin_changes_only_the_asked_value(split):
    for i, ep in enumerate(_episodes(split)):
        twin = counterfactual(ep, i)
        old, new = ep.meta["value"], twin.meta["value"]
        assert new.lower() != old.lower()
        assert twin.question == ep.question and twin.fact_index == ep.fact_index and twin.kind == ep.kind
        assert twin.answer.rstrip(".").lower() == new.lower() and new in twin.aliases
        fact = twin.messages[twin.fact_index]["content"]
        assert new in fact and old not in fact, (ep.messages[ep.fact_index], fact)
        changed = [j for j, (a, b) in enumerate(zip(ep.messages, twin.messages)) if a != b]
        assert ep.fact_index in changed
        for j in changed:  # every changed message mentioned the old value (any case)
            assert old.lower() in ep.messages[j]["content"].lower()
        if ep.kind == "update":  # the older value stays; only the newest changes
            assert ep.meta["old_value"] == twin.meta["old_value"]
            assert new.lower() != ep.meta["old_value"].lower()
        if ep.kind == "multi":  # the other facts keep their values
            others = [v for v in ep.meta["values"] if v != old]
            assert [v for v in twin.meta["values"] if v != new] == others


def test_twin_is_deterministic_and_seed_dependent():
    ep = _episodes("train")[0]
    assert counterfactual(ep, 3) == counterfactual(ep, 3)
    assert len({counterfactual(ep, s).meta["value"] for s in range(12)}) > 1


def test_article_follows_the_new_value():
    from deltamem_agents.datasets.counterfactual import _sub

    assert _sub("I drive an Audi. Audi!", "Audi", "Kia") == "I drive a Kia. Kia!"
    assert _sub("a teal wall, not tealish", "teal", "olive green") == "an olive green wall, not tealish"


def test_unsupported_kinds_raise():
    tool = generate(1, seed=1, split="train", mix={"tool": 1})[0]
    assert not supports_counterfactual(tool)
    with pytest.raises(ValueError, match="counterfactual"):
        counterfactual(tool, 0)
