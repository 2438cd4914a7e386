"""The variable-tracking suite's episodes (datasets.vartrack) and bench items, on the real tokenizer."""

from __future__ import annotations

import re

import pytest

from deltamem_agents.bench.items import Item
from deltamem_agents.bench.scoring import score
from deltamem_agents.bench.tasks import TaskConfig, build_items
from deltamem_agents.datasets.vartrack import vartrack_episode


@pytest.fixture(scope="module")
def count(real_backbone):
    tok = real_backbone[1]
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_the_chain_leads_from_the_stated_code_to_the_asked_locker(count, hops):
    for seed in range(5):
        ep = vartrack_episode(seed, hops, 120, count)
        text = [m["content"] for m in ep.messages]
        chain, code = ep.meta["chain"], ep.meta["value"]
        assert len(chain) == hops + 1 and ep.question.endswith(f"locker {chain[-1]}?")
        assert sum(code in t for t in text) == 1 and f"locker {chain[0]} is {code}" in text[ep.fact_index]
        for a, b in zip(chain, chain[1:]):  # every link is stated once, in order
            links = [i for i, t in enumerate(text) if f"{b} uses" in t or f"locker {b} to" in t]
            assert len(links) == 1 and f"locker {a}." in text[links[0]]
        assert ep.meta["decoy"] != code and sum(ep.meta["decoy"] in t for t in text) == 1
        assert ep.meta["decoy_locker"] not in chain
        assert ep.meta["tokens_after"] >= 120 and ep.answer.rstrip(".") == code
        if hops:  # the asked locker is never stated with the code
            assert not any(re.search(rf"locker {chain[-1]} is", t) for t in text)
    assert vartrack_episode(3, 2, 120, count) == vartrack_episode(3, 2, 120, count)  # seeded
    assert vartrack_episode(3, 2, 120, count) != vartrack_episode(4, 2, 120, count)


def test_bench_items_cells_conditions_and_decoy_scoring(count):
    cfg = TaskConfig(limit=2, vartrack_hops=(0, 2), vartrack_distance=100, full_budget=2048)
    items = build_items("synthetic-vartrack", cfg, count)
    assert [i.item_id for i in items] == [f"h{h}/{c}/{i}" for h in (0, 2) for c in ("in_window", "out_of_window")
                                          for i in range(2)]
    it: Item = items[-1]
    assert it.fields["hops"] == 2 and it.donor is not None and it.donor != it.messages
    assert it.budget is None and items[-3].budget == 2048  # out_of_window uses the run's budget
    right, decoy = score(it, f"It is {it.gold}"), score(it, f"It is {it.fields['decoy']}.")
    assert right["score"] == 1.0 and not right["says_decoy"]
    assert decoy["score"] == 0.0 and decoy["says_decoy"]
