"""The episode sampler: deterministic, curriculum distances, and the value-kind filter."""

from __future__ import annotations

import pytest

from deltamem_agents.datasets.pools import POOLS
from deltamem_agents.datasets.synthetic import asked_value_kind
from deltamem_agents.datasets.sampler import EpisodeSampler


@pytest.fixture(scope="module")
def tok():
    from deltamem_agents.backbone import load_backbone

    return load_backbone()[1]


def test_same_step_same_episode(tok):
    a, b = EpisodeSampler(tok, seed=3), EpisodeSampler(tok, seed=3)
    for step in range(5):
        assert a.sample(step, 1)[0] == b.sample(step, 1)[0]
    assert EpisodeSampler(tok, seed=4).sample(0, 1)[0] != a.sample(0, 1)[0]


def test_value_kind_filter_applies_to_training_and_heldout(tok):
    kinds = {"colour", "sport", "food"}
    s = EpisodeSampler(tok, seed=1, value_kinds=sorted(kinds), mix={"fact": 1, "update": 1, "multi": 1})
    seen = {asked_value_kind(s.sample(i, 0)[0]) for i in range(12)}
    assert seen <= kinds and seen
    held = [s.heldout(i)[0] for i in range(4)]
    assert all(asked_value_kind(ep) in kinds and ep.meta["split"] == "heldout" for ep in held)
    assert all(ep.answer.rstrip(".").lower() in {v.lower() for k in kinds for v in POOLS[k]} for ep in held)


def test_unsatisfiable_filter_raises(tok):
    s = EpisodeSampler(tok, seed=1, value_kinds=["colour"], mix={"tool": 1.0}, in_window_frac=0.0)
    with pytest.raises(ValueError, match="value kinds"):
        s.sample(0, 0)
