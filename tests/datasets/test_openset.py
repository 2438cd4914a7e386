"""Open-set facts: evaluation values, wordings and relation types never occur in training."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from deltamem_agents.datasets.openset import KINDS, RELATIONS, draw_value, sample_fact, split_of, template_split


def test_values_of_the_two_splits_are_disjoint_and_of_every_kind():
    rng = random.Random(0)
    for kind in KINDS:
        train = {draw_value(kind, rng, "train") for _ in range(60)}
        held = {draw_value(kind, rng, "heldout") for _ in range(30)}
        assert train and held and not train & held, kind
        assert all(split_of(kind, v) == "heldout" for v in held)
    with pytest.raises(ValueError):
        draw_value("number", rng, "test")


def test_facts_state_their_value_verbatim_and_keep_wordings_and_relations_apart():
    rng = random.Random(1)
    train = [sample_fact(rng, "train") for _ in range(200)]
    held = [sample_fact(rng, "heldout") for _ in range(200)]
    new = [sample_fact(rng, "heldout", heldout_types=True) for _ in range(50)]
    for f in train + held + new:
        assert f.value in f.statement and f.kind in KINDS
    assert {f.relation for f in new}.isdisjoint({f.relation for f in train})
    train_wordings = {s for r in RELATIONS if not r.heldout for s in template_split(r, "train")[0]}
    held_wordings = {s for r in RELATIONS if not r.heldout for s in template_split(r, "heldout")[0]}
    assert not train_wordings & held_wordings
    assert {f.statement.replace(f.value, "{v}") for f in held if not f.statement.count(f.value) > 1} <= held_wordings


def test_handwritten_probes_are_well_formed():
    from deltamem_agents.datasets.handwritten import handwritten_facts
    from deltamem_agents.datasets.openset import RELATIONS

    facts = handwritten_facts()
    assert len(facts) >= 40
    assert {f.kind for f in facts} == {"person", "work", "tool"}
    assert len({f.relation for f in facts}) == len(facts)
    templates = [s.split("{v}")[0].strip() for r in RELATIONS for s in r.statements]
    for f in facts:
        assert f.value in f.statement and f.value not in f.question
        assert not any(t and f.statement.startswith(t) for t in templates), f.statement  # unlike the generator


def test_value_pools_are_the_same_in_every_process():
    """Train and held-out values must be the same sets in every run: no dependence on the string-hash seed."""
    code = ("import hashlib; from deltamem_agents.datasets.openset import _faker_lists; "
            "print(hashlib.sha1(repr(sorted(_faker_lists().items())).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": str(seed)},
                           capture_output=True, text=True, check=True).stdout for seed in (1, 2)}
    assert len(outs) == 1
