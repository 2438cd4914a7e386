"""Tests for the bAbI v1.2 reader and its conversion into chat episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltamem_agents.datasets.babi import ENV_VAR, babi_episodes, parse_tasks, read_babi
from deltamem_agents.datasets.episode import Episode

BABI_DIR = Path("/work/shared/data/babi/en")
needs_data = pytest.mark.skipif(not BABI_DIR.is_dir(), reason="bAbI data not available")
TASKS = (1, 2, 3, 5, 6, 7)

SAMPLE = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
1 Bill got the milk there.
2 Bill went to the office.
3 Where is the milk? \toffice\t1 2
"""


def test_read_small_file(tmp_path):
    p = tmp_path / "qa2_two-supporting-facts_train.txt"
    p.write_text(SAMPLE)
    items = read_babi(p)
    assert len(items) == 3
    a, b, c = items
    assert a.sentences == ("Mary moved to the bathroom.", "John went to the hallway.")
    assert (a.question, a.answer, a.supporting, a.task, a.story_index) == ("Where is Mary?", "bathroom", (0,), 2, 0)
    assert b.sentences[-2:] == ("Daniel went back to the hallway.", "Sandra moved to the garden.")
    assert len(b.sentences) == 4 and b.supporting == (2,) and b.supporting_ids == (4,)
    assert c.story_index == 1 and c.sentences == ("Bill got the milk there.", "Bill went to the office.")
    assert c.supporting == (0, 1)


def test_episodes_from_small_dir(tmp_path):
    (tmp_path / "qa2_two-supporting-facts_train.txt").write_text(SAMPLE)
    eps = babi_episodes(tmp_path, tasks=(2,), sentences_per_message=1)
    e = eps[1]
    assert e.kind == "babi" and e.answer == "Hallway." and e.aliases == ("hallway",)
    assert [m["role"] for m in e.messages] == ["user", "assistant"] * 4
    assert e.messages[4]["content"] == "Story update: Daniel went back to the hallway."
    assert e.fact_index == 4 and e.meta["supporting_messages"] == [4]
    assert eps[2].meta["supporting_messages"] == [0, 2] and eps[2].fact_index == 2
    with pytest.raises(FileNotFoundError):
        babi_episodes(tmp_path, tasks=(1,))


def test_missing_path_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        babi_episodes()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        babi_episodes(tmp_path / "nope")
    (tmp_path / "qa1_x_train.txt").write_text(SAMPLE)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert len(babi_episodes(tasks=(1,))) == 3


@needs_data
def test_real_files_first_stories():
    eps = babi_episodes(BABI_DIR, tasks=TASKS, split="train", max_items=None)
    by_task = {t: [e for e in eps if e.meta["task"] == t] for t in TASKS}
    assert all(len(v) == 1000 for v in by_task.values())
    first = {t: v[0] for t, v in by_task.items()}
    # qa1: "Where is Mary?" -> bathroom, supported by sentence 1 (in the first message)
    e = first[1]
    assert e.question == "Where is Mary?" and e.answer == "Bathroom." and e.fact_index == 0
    assert e.messages[0]["content"] == "Story update: Mary moved to the bathroom. John went to the hallway."
    # qa2: football in the garden, supported by lines 3 and 6 (messages 0 and 2 with 3 sentences/message)
    e = first[2]
    assert (e.question, e.answer, e.meta["supporting_ids"]) == ("Where is the football?", "Garden.", [3, 6])
    assert e.meta["supporting_messages"] == [0, 2] and e.fact_index == 2
    # qa3: 3 supporting facts, lines 23 17 5
    e = first[3]
    assert e.answer == "Office." and e.meta["supporting_ids"] == [23, 17, 5] and e.fact_index == 14
    assert (first[5].answer, first[5].question) == ("Football.", "What did Bill give to Fred?")
    assert (first[6].answer, first[6].question) == ("No.", "Is Sandra in the hallway?")
    assert (first[7].answer, first[7].question) == ("One.", "How many objects is Mary carrying?")
    for e in eps[::97]:
        for s in e.meta["supporting_messages"]:
            assert e.messages[s]["role"] == "user" and e.messages[s]["content"].startswith("Story update: ")
        assert Episode.from_dict(json.loads(json.dumps(e.to_dict()))) == e


@needs_data
def test_real_files_test_split_and_max_items():
    a = babi_episodes(BABI_DIR, tasks=(1, 6), split="test", max_items=25, seed=1)
    b = babi_episodes(BABI_DIR, tasks=(1, 6), split="test", max_items=25, seed=1)
    c = babi_episodes(BABI_DIR, tasks=(1, 6), split="test", max_items=25, seed=2)
    assert len(a) == 50 and [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.question for e in a] != [e.question for e in c]
    assert all(e.meta["split"] == "test" for e in a)
    with pytest.raises(ValueError):
        babi_episodes(BABI_DIR, tasks=(1,), split="valid")


def test_parse_tasks():
    assert parse_tasks("4,11") == (4, 11)
    assert parse_tasks("all") == tuple(range(1, 21))
    for bad in ("0", "21", "", "4,x", "1,,2"):
        with pytest.raises(ValueError, match="1..20"):
            parse_tasks(bad)
