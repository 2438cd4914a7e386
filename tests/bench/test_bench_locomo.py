"""LoCoMo loader on the real dev file (and a 10-conversation file built from it): protocol details, no model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from deltamem_agents.bench.tasks.locomo import (NO_INFO, TEMPORAL_SUFFIX, conversation_messages, default_path,
                                                load_locomo, locomo_items, sessions)

needs_data = pytest.mark.skipif(not default_path().is_file(), reason="LoCoMo dev file not available")


@pytest.fixture(scope="module")
def data():
    return load_locomo()


@pytest.fixture(scope="module")
def items():
    return locomo_items()


@needs_data
def test_dev_split_counts(data, items):
    assert [c["sample_id"] for c in data] == ["conv-26", "conv-30", "conv-41", "conv-42", "conv-43"]
    assert len(items) == 999
    assert Counter(i.fields["category"] for i in items) == {4: 418, 5: 237, 2: 156, 1: 142, 3: 46}
    assert len({i.item_id for i in items}) == 999


@needs_data
def test_history_follows_sessions_speakers_and_evidence(data):
    conv = data[0]["conversation"]
    nums = sessions(conv)
    assert nums == sorted(nums) and nums[:2] == [1, 2] and 10 in nums  # numeric, not lexicographic order
    msgs, index = conversation_messages(conv)
    assert len(msgs) == sum(len(conv[f"session_{s}"]) for s in nums)
    first = conv["session_1"][0]
    assert msgs[0]["content"].startswith(f"DATE: {conv['session_1_date_time']}\n{first['speaker']} said, ")
    assert msgs[0]["role"] == ("user" if first["speaker"] == conv["speaker_a"] else "assistant")
    dates = [m["content"].split("\n")[0] for m in msgs if m["content"].startswith("DATE: ")]
    assert dates == [f"DATE: {conv[f'session_{s}_date_time']}" for s in nums]
    for s in nums:  # every turn lands at its dia_id with its speaker's role and text
        for turn in conv[f"session_{s}"]:
            m = msgs[index[turn["dia_id"]]]
            assert turn["text"] in m["content"]
            assert m["role"] == ("user" if turn["speaker"] == conv["speaker_a"] else "assistant")


@needs_data
def test_questions_follow_the_official_prompts(items):
    by_cat = {c: [i for i in items if i.fields["category"] == c] for c in range(1, 6)}
    assert all(i.question.endswith(TEMPORAL_SUFFIX) for i in by_cat[2])
    assert all("Question: " in i.question and i.query and i.query in i.question for i in items)
    firsts = set()
    for i in by_cat[5]:
        opts = i.fields["options"]
        assert NO_INFO in opts.values() and i.gold == NO_INFO
        assert f"(a) {opts['a']} (b) {opts['b']}." in i.question
        firsts.add(opts["a"] == NO_INFO)
    assert firsts == {True, False}  # the option order is drawn per question
    assert all(i.gold and i.fields["options"] is None for c in (1, 2, 3, 4) for i in by_cat[c])
    assert all(i.donor is not None and i.donor is not i.messages and i.donor_id != i.fields["conversation"]
               for i in items)
    assert sum(1 for i in items if i.evidence) > 990  # evidence dia_ids resolve to message indices


@needs_data
def test_limit_is_per_conversation_and_category_and_seeded(items):
    a = locomo_items(limit=2, seed=0)
    assert max(Counter((i.fields["conversation"], i.fields["category"]) for i in a).values()) == 2
    assert [i.item_id for i in a] == [i.item_id for i in locomo_items(limit=2, seed=0)]
    assert [i.item_id for i in a] != [i.item_id for i in locomo_items(limit=2, seed=1)]
    assert {i.item_id for i in a} <= {i.item_id for i in items}


@needs_data
def test_runs_unchanged_on_a_ten_conversation_file(data, tmp_path):
    ten = data + [dict(c, sample_id=c["sample_id"] + "-b") for c in data]
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps(ten))
    got = locomo_items(path, limit=1)
    assert len({i.fields["conversation"] for i in got}) == 10
    assert len(locomo_items(path)) == 2 * 999


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--locomo"):
        load_locomo(tmp_path / "nope.json")
