"""Tests for the seeded synthetic fact/update/tool/multi-fact conversation generators."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("faker")

from deltamem_agents.datasets.distractors import mentions  # noqa: E402
from deltamem_agents.datasets.episode import Episode, approx_tokens  # noqa: E402
from deltamem_agents.datasets.synthetic import (  # noqa: E402
    generate,
    make_fact_episode,
    make_in_window_episode,
    make_multi_fact_episode,
)
from deltamem_agents.datasets.templates import FAMILIES, RELATIONS, template_inventory  # noqa: E402
from deltamem_agents.datasets.tool_templates import TOOL_SCENARIOS, tool_templates  # noqa: E402

KINDS = ("fact", "update", "tool")


def char_tokens(text: str) -> int:
    """A count_tokens different from the default: ~4 characters per token."""
    return (len(text) + 3) // 4


@pytest.fixture(scope="module")
def train_eps():
    return generate(150, seed=0, split="train", distance_range=(0, 300))


@pytest.fixture(scope="module")
def heldout_eps():
    return generate(150, seed=0, split="heldout", distance_range=(0, 300))


def _dicts(eps):
    return [e.to_dict() for e in eps]


def test_determinism():
    a = generate(20, seed=7, split="train", distance_range=(0, 200))
    b = generate(20, seed=7, split="train", distance_range=(0, 200))
    c = generate(20, seed=8, split="train", distance_range=(0, 200))
    assert _dicts(a) == _dicts(b)
    assert _dicts(a) != _dicts(c)
    for kind in KINDS:
        e1 = make_fact_episode(random.Random(3), kind=kind, distance_tokens=50)
        e2 = make_fact_episode(random.Random(3), kind=kind, distance_tokens=50)
        assert e1 == e2


def test_splits_use_different_seeds_and_content(train_eps, heldout_eps):
    assert {e.meta["seed"] for e in train_eps}.isdisjoint({e.meta["seed"] for e in heldout_eps})
    assert all(e.meta["split"] == "train" for e in train_eps)
    assert all(e.meta["split"] == "heldout" for e in heldout_eps)
    # even with the same RNG state, the split salts the episode RNG
    assert make_fact_episode(random.Random(1)) != make_fact_episode(random.Random(1), split="heldout")
    with pytest.raises(ValueError):
        generate(1, seed=0, split="test")


def test_inventory_sizes_and_disjoint_template_ids():
    inv = template_inventory()
    assert inv["train"]["relations"] >= 25
    assert inv["heldout"]["relations"] > inv["train"]["relations"]
    assert len(inv["heldout_only_relations"]) >= 3
    assert set(inv["train"]["template_ids"]).isdisjoint(inv["heldout"]["template_ids"])
    for fam, parts in FAMILIES.items():
        for part in ("s", "q"):
            assert len(parts[part]["train"]) >= 4, (fam, part)
            assert len(parts[part]["train"]) + len(parts[part]["heldout"]) >= 4 + 2, (fam, part)
            assert len(parts[part]["heldout"]) >= 2, (fam, part)
    for sc in TOOL_SCENARIOS:
        for part in ("r", "q"):
            tr, he = tool_templates(sc, part, "train"), tool_templates(sc, part, "heldout")
            assert {i for i, _ in tr}.isdisjoint({i for i, _ in he})
            assert len(he) >= 2 and (sc.heldout_only or len(tr) >= 4)


def test_heldout_episodes_use_heldout_templates_and_relations(train_eps, heldout_eps):
    train_ids = {i for e in train_eps for i in e.meta["template_ids"]}
    held_ids = {i for e in heldout_eps for i in e.meta["template_ids"]}
    assert train_ids and held_ids and train_ids.isdisjoint(held_ids)
    inv = template_inventory()
    assert train_ids <= set(inv["train"]["template_ids"]) | {
        i for sc in TOOL_SCENARIOS for p in "rq" for i, _ in tool_templates(sc, p, "train")}
    held_only = set(inv["heldout_only_relations"]) | {f"tool_{s.key}" for s in TOOL_SCENARIOS if s.heldout_only}

    def rels(eps):
        return {r for e in eps for r in e.meta.get("relations", [e.meta["relation"]])}

    assert not rels(train_eps) & held_only
    assert rels(heldout_eps) & held_only
    assert len(rels(train_eps)) >= 25


def test_value_in_fact_message_and_answer_format(train_eps, heldout_eps):
    for e in train_eps + heldout_eps:
        value = e.meta["value"]
        fact = e.messages[e.fact_index]
        assert value.lower() in fact["content"].lower(), (e.kind, fact, value)
        assert e.answer.lower() == value.lower() + "." and e.answer[0] == e.answer[0].upper()
        assert value in e.aliases
        assert not mentions([value]).search(e.question), (e.question, value)
        assert e.chat[-1] == {"role": "user", "content": e.question}
        roles = [m["role"] for m in e.messages]
        assert roles[0] == "user" and roles[-1] == "assistant"  # the question follows an assistant turn
        assert all(a != "user" or b != "user" for a, b in zip(roles, roles[1:]))


def test_update_episodes():
    rng = random.Random(11)
    for _ in range(30):
        e = make_fact_episode(rng, kind="update", distance_tokens=80)
        old, new = e.meta["old_value"], e.meta["value"]
        assert old != new and e.kind == "update"
        assert new.lower() in e.messages[e.fact_index]["content"].lower()
        first = e.meta["old_fact_index"]
        assert first < e.fact_index
        assert old.lower() in e.messages[first]["content"].lower()
        assert e.answer.lower() == new.lower() + "."
        assert "update" in e.meta["templates"]


def test_distractors_do_not_mention_the_value():
    rng = random.Random(5)
    for _ in range(40):
        e = make_fact_episode(rng, kind="fact", distance_tokens=300)
        pat = mentions([e.meta["value"]])
        for i, m in enumerate(e.messages):
            if i not in (e.fact_index, e.fact_index + 1):
                assert not pat.search(m["content"]), (m, e.meta["value"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("distance", [0, 40, 250, 800])
def test_distance_control(kind, distance):
    rng = random.Random(distance)
    for count in (None, char_tokens):
        e = make_fact_episode(rng, kind=kind, distance_tokens=distance, count_tokens=count)
        got = e.tokens_after_fact(count or approx_tokens)
        assert got >= distance and got == e.meta["tokens_after"]
        assert got < distance + 80  # overshoot by at most ~one exchange plus the fact's own reply
    e = make_fact_episode(rng, kind=kind, distance_tokens=0, min_messages_after=12)
    assert len(e.messages) - e.fact_index - 1 >= 12


def test_multi_fact():
    rng = random.Random(2)
    for n in (1, 3, 6, 10):
        e = make_multi_fact_episode(rng, n_facts=n, distance_tokens=120, count_tokens=char_tokens)
        assert e.kind == "multi" and e.meta["n_facts"] == n
        assert len(set(e.meta["relations"])) == n
        assert len({v.lower() for v in e.meta["values"]}) == n
        for idx, value in zip(e.meta["fact_indices"], e.meta["values"]):
            assert value.lower() in e.messages[idx]["content"].lower()
        assert e.fact_index == e.meta["fact_indices"][e.meta["asked"]]
        assert e.tokens_after_fact(char_tokens) >= 120


def test_round_trip_json(train_eps, heldout_eps):
    for e in train_eps[:60] + heldout_eps[:60]:
        back = Episode.from_dict(json.loads(json.dumps(e.to_dict())))
        assert back == e
        assert back.to_dict() == e.to_dict()


def test_tool_episodes():
    rng = random.Random(9)
    for split in ("train", "heldout"):
        for _ in range(25):
            e = make_fact_episode(rng, split=split, kind="tool", distance_tokens=60)
            call_msg, tool_msg = e.messages[e.fact_index - 1], e.messages[e.fact_index]
            assert call_msg["role"] == "assistant" and call_msg["content"] == ""
            (call,) = call_msg["tool_calls"]
            assert call["type"] == "function" and call["id"].startswith("call_")
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
            assert tool_msg["role"] == "tool" and tool_msg["tool_call_id"] == call["id"]
            assert tool_msg["name"] == call["function"]["name"] == e.meta["function"]
            result = json.loads(tool_msg["content"])
            assert e.meta["value"] in json.dumps(result)
            assert e.messages[e.fact_index - 2]["role"] == "user"


def test_in_window_and_mix():
    e = make_in_window_episode(random.Random(0), max_distance_tokens=30)
    assert e.kind == "in_window" and e.meta["in_window"] and e.tokens_after_fact() < 30 + 60
    eps = generate(40, seed=3, split="train", mix={"multi": 1.0}, distance_range=(10, 20))
    assert {x.kind for x in eps} == {"multi"}
    kinds = {x.kind for x in generate(60, seed=3, split="heldout", distance_range=(0, 50))}
    assert kinds == {"fact", "update", "multi", "tool", "in_window"}
    with pytest.raises(ValueError):
        generate(1, seed=0, split="train", mix={"nope": 1.0})


def test_relations_have_short_values():
    assert len(RELATIONS) >= 25
    for e in generate(100, seed=4, split="heldout", distance_range=(0, 10)):
        assert 0 < len(e.meta["value"]) <= 30 and len(e.meta["value"].split()) <= 4


def test_messages_pass_runtime_validation(train_eps, heldout_eps):
    messages = pytest.importorskip("deltamem_agents.runtime.messages")
    for e in train_eps[:50] + heldout_eps[:50]:
        for m in e.chat:
            assert messages.validate_message(m) == m
