"""The wide training bank (lab/wide_facts.py) stays disjoint from every evaluation set and renders usable facts."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from deltamem_agents.datasets.openset import RELATIONS, split_of
from lab.wide_facts import TOOL_RELATIONS, USER_RELATIONS, wide_fact

PROBES = Path(__file__).parents[2] / "deltamem_agents" / "datasets" / "data" / "handwritten_probes.jsonl"
# the topics of the hand-written probes and of the generator's held-out relation types
EVAL_TOPICS = ("vet", "locker", "baby", "grandmother", "village", "passport", "roof", "cat", "anniversary",
               "brother-in-law", "storage", "audiobook", "spare key", "marathon", "pin", "piano", "migration",
               "legal", "offsite", "budget", "staging", "codename", "procurement", "freeze", "sensor", "vendor",
               "candidate", "feature flag", "latency", "audit", "quarterly", "tender", "flight", "gate", "ticket",
               "weather", "wind", "invoice", "meeting", "package", "tracking", "plumber", "hotel", "confirmation",
               "stock", "commit", "translate", "signups", "wifi", "password", "plate", "dentist", "nephew")


def _bank_text() -> str:
    parts = [" ".join(s) + " " + " ".join(q) for _, _, s, q in USER_RELATIONS + TOOL_RELATIONS]
    parts += [name + " " + " ".join(fields) for name, _, fields, _ in TOOL_RELATIONS]
    return " ".join(parts).lower().replace("_", " ")


def test_the_bank_shares_no_topic_or_question_with_the_evaluation_sets():
    text = _bank_text()
    hits = [t for t in EVAL_TOPICS if re.search(rf"\b{re.escape(t)}s?\b", text)]
    assert hits == []
    probes = [json.loads(x) for x in PROBES.read_text().splitlines()]
    questions = {q.lower() for _, _, _, qs in USER_RELATIONS + TOOL_RELATIONS for q in qs}
    assert not questions & {p["question"].lower() for p in probes}
    held = {q.lower() for r in RELATIONS for q in (r.questions if r.heldout else r.questions[-1:])}
    assert not questions & held
    assert not {name for name, *_ in USER_RELATIONS + TOOL_RELATIONS} & {r.name for r in RELATIONS}


def test_facts_hold_their_training_value_once():
    rng = random.Random(0)
    for _ in range(400):
        f = wide_fact(rng)
        assert split_of(f.kind, f.value) == "train"
        assert f.statement.count(f.value) == 1, f.statement
        assert f.question.endswith(("?", "forgot.")) and f.speaker in ("user", "tool")
