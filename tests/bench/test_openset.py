"""Open-set bench suites and the fact-turn ceiling: held-out deterministic items, value-free chit-chat, tool facts as
tool messages, the ceiling's exact prompt, and a tiny end-to-end run with a report (random 2-layer model over the
real tokenizer, 2-token answers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from deltamem_agents.bench.backends import fact
from deltamem_agents.bench.context import BenchContext
from deltamem_agents.bench.report import read_rows, render
from deltamem_agents.bench.runner import BenchConfig, run_bench
from deltamem_agents.bench.tasks import TaskConfig, build_items
from deltamem_agents.bench.tasks.openset import TASKS, hand_order
from deltamem_agents.datasets.answers import contains_answer
from deltamem_agents.datasets.episode import message_text
from deltamem_agents.datasets.handwritten import handwritten_facts
from deltamem_agents.datasets.openset import RELATIONS, split_of, template_split
from deltamem_agents.runtime.render import ChatRenderer
from tests.conftest import tiny_ssw_on_real_tokenizer

CFG = TaskConfig(limit=2, openset_distances=(60,), openset_tool_distance=60, openset_n_facts=(3, 5),
                 openset_multi_distance=60)
WORDS = lambda s: len(s.split())  # noqa: E731  (item generation only needs a token count)
REL = {r.name: r for r in RELATIONS}


@pytest.fixture(scope="module")
def items():
    return {t: build_items(t, CFG, WORDS) for t in TASKS}


@pytest.fixture(scope="module")
def model(one_thread):
    return tiny_ssw_on_real_tokenizer()


def test_items_are_deterministic_held_out_and_prefix_stable(items):
    assert {t: len(v) for t, v in items.items()} == {"openset-distance": 2, "openset-newrel": 2, "openset-hand": 2,
                                                      "openset-tool": 2, "openset-multi": 4}
    assert build_items("openset-multi", CFG, WORDS) == items["openset-multi"]
    assert build_items("openset-distance", replace(CFG, limit=1), WORDS) == items["openset-distance"][:1]
    assert build_items("openset-distance", replace(CFG, seed=1), WORDS) != items["openset-distance"]
    for task in ("openset-distance", "openset-newrel", "openset-tool", "openset-multi"):
        for it in items[task]:
            rel = REL[it.fields["relation"]]
            assert split_of(rel.kind, it.gold) == "heldout"  # a value the lab never trains on
            said = message_text(it.messages[it.evidence[0]])
            assert any(s.format(v=it.gold) == said for s in template_split(rel, "heldout")[0])  # held-out wording
            assert it.question in template_split(rel, "heldout")[1]
            assert rel.heldout == (task == "openset-newrel" or rel.name == "tracking")
    assert [i.gold for i in items["openset-hand"]] == [f.value for f in hand_order()[:2]]
    assert set(hand_order()) == set(handwritten_facts()) and len(hand_order()) == 48
    assert [f.kind for f in hand_order()[:3]] == ["person", "work", "tool"]
    assert {i.fields["n_facts"] for i in items["openset-multi"]} == {3, 5}
    for it in items["openset-distance"] + items["openset-tool"]:  # donors: the next episode of the cell
        assert it.donor and it.donor != it.messages and it.fields["tokens_after"] >= 60


def test_chit_chat_never_mentions_a_value(items):
    for task, its in items.items():
        for it in its:
            n_facts = it.fields["n_facts"]
            stated = [i for i in it.fact_turns if it.messages[i]["role"] in ("user", "tool")
                      and contains_answer(message_text(it.messages[i]), [it.gold])]
            assert it.evidence[0] in stated and len(stated) == 1, task  # the asked value is said exactly once
            for i, m in enumerate(it.messages):
                if i not in it.fact_turns:
                    assert not contains_answer(message_text(m), [it.gold]), (task, m)
            assert len(it.fact_turns) >= 2 * n_facts


def test_tool_facts_are_tool_messages_after_a_request(items, model):
    rend = ChatRenderer(model[1], "sys")
    tool_items = items["openset-tool"] + [i for i in items["openset-hand"] if i.fields["speaker"] == "tool"]
    hand3 = build_items("openset-hand", replace(CFG, limit=3), WORDS)
    tool_items += [i for i in hand3 if i.fields["speaker"] == "tool"]
    assert tool_items and all(i.fields["speaker"] == "tool" for i in items["openset-tool"])
    for it in tool_items:
        k = it.evidence[0]
        req, call, res, ack = it.messages[k - 2:k + 2]
        assert req["role"] == "user" and not contains_answer(req["content"], [it.gold])
        assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == res["tool_call_id"]
        assert res["role"] == "tool" and res["name"] == call["tool_calls"][0]["function"]["name"]
        assert it.gold in res["content"] and ack["role"] == "assistant" and it.gold not in ack["content"]
        assert tuple(it.fact_turns) == (k - 2, k - 1, k, k + 1)
        text = model[1].decode(rend.render(list(it.messages[k - 2:k + 2]))[0])
        assert "<tool_call>" in text and it.gold in text


def test_fact_backend_prompt_is_the_fact_turns_and_the_question(items, model):
    net, tok = model
    ctx = BenchContext(net, tok, budget=128, full_budget=1024)
    for it in (items["openset-tool"][0], items["openset-multi"][-1]):
        prep = fact(ctx, it)
        rend = ctx.renderer(it.system_prompt)
        turns = [it.messages[i] for i in it.fact_turns]
        want = rend.system_ids + rend.render(turns + [{"role": "user", "content": it.question}])[0] \
            + rend.generation_prompt_ids
        assert prep.skip is None and prep.state is None and prep.ids == want
        assert prep.fields["evidence_visible"] == 1.0
    multi = items["openset-multi"][-1]
    assert len(multi.fact_turns) >= 10  # all five facts' turns, in order
    assert list(multi.fact_turns) == sorted(multi.fact_turns)
    synth = build_items("synthetic-distance", TaskConfig(limit=1, distances=(30,), conditions=("out_of_window",)),
                        WORDS)[0]
    assert "fact turns" in fact(ctx, synth).skip  # no fact turn marked: refused, never scored


def test_tiny_end_to_end_run_and_report(model, tmp_path):
    cfg = BenchConfig(out=tmp_path, tasks=TASKS, backends=("deltamem", "deltamem_shuffled", "fact"), budget=128,
                      max_new_tokens=2, threads=1, progress=False, task=replace(CFG, openset_n_facts=(3,)))
    rows = read_rows(run_bench(cfg, model=model[0], tokenizer=model[1]))
    assert len(rows) == 5 * 2 * 3 and all(r["skipped"] is None and r["score"] in (0.0, 1.0) for r in rows)
    assert {r["memory_kind"] for r in rows if r["backend"] == "fact"} == {"kv_cache"}
    assert all(not r["in_window"] for r in rows if r["backend"] == "deltamem")  # the fact left the window
    text = render(rows)
    for task in TASKS:
        assert f"| {task} |" in text and f"Accuracy by value kind, all cells pooled ({task})" in text
    assert "fact turn (ceiling)" in text and "δ-mem − fact turn (ceiling)" in text
    assert "| openset-multi | k3 |" in text and "| openset-tool | d60 |" in text
