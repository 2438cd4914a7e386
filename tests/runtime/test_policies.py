"""Pure runtime policies: which messages are new, the window policy, message validation (fuzzed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltamem_agents.errors import InvalidMessageError
from deltamem_agents.runtime.history import new_messages
from deltamem_agents.runtime.messages import template_text, validate_message
from deltamem_agents.runtime.window import WindowPolicy, plan_epochs


def u(t):
    return {"role": "user", "content": t}


def a(t):
    return {"role": "assistant", "content": t}


LOG = [u("hi"), a("hello"), u("my cat is Miso"), a("noted")]


@pytest.mark.parametrize("given_msgs, expected", [
    (LOG + [u("q")], [u("q")]),                          # full history resent (LangGraph)
    ([u("q")], [u("q")]),                                # only the new message
    (LOG[2:] + [u("q")], [u("q")]),                      # history trimmed in front
    ([u("HI (edited)"), a("hello"), u("my cat is Miso"), a("noted"), u("q")], [u("q")]),  # earlier edit ignored
    (LOG, []),                                           # nothing new
])
def test_new_messages_policy(given_msgs, expected):
    assert new_messages(LOG, given_msgs) == expected


def test_new_messages_modes():
    assert new_messages(LOG, [a("noted")], mode="new") == [a("noted")]
    assert new_messages([], [u("x")]) == [u("x")]
    with pytest.raises(InvalidMessageError):
        new_messages(LOG, [u("other")], mode="full")


def test_window_policy_evicts_in_chunks():
    p = WindowPolicy(budget=200, reserve=20, low_water=0.5)
    assert p.evict(10, [30] * 4, 30) == 0
    drop = p.evict(10, [30] * 6, 30)
    assert drop >= 3 and 10 + 30 * (6 - drop) + 30 + 20 <= 100
    eps = plan_epochs([30, 10] * 12, {i: 1 for i in range(0, 24, 2)}, 11, p)
    assert eps[0].start == 0 and eps[-1].end == 24
    for e1, e2 in zip(eps, eps[1:]):  # epochs tile the conversation; carried-over messages are re-read
        assert e2.first_new == e1.end and e2.start <= e2.first_new
    with pytest.raises(ValueError):
        WindowPolicy(budget=10)


@pytest.mark.parametrize("bad, match", [
    ({"role": "robot", "content": "x"}, "unknown message role"),
    ({"role": "user", "content": 5}, "must be a string"),
    ({"role": "user", "content": ""}, "empty"),
    ({"role": "user", "content": "\ud800"}, "UTF-8"),
    ({"role": "user", "content": "x" * 2_000_001}, "limit"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}, "JSON"),
    ({"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}, "only assistant"),
    ("hello", "must be a dict"),
])
def test_bad_messages_get_clear_errors(bad, match):
    with pytest.raises(InvalidMessageError, match=match):
        validate_message(bad)


def test_control_characters_and_tool_calls_render():
    m = validate_message({"role": "user", "content": "tab\tbell\x07 ok"})
    assert m["content"] == "tab\tbell\x07 ok"
    call = validate_message({"role": "assistant", "content": "",
                             "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}]})
    assert template_text(call) == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(max_size=8), st.one_of(
    st.text(), st.integers(), st.none(), st.lists(st.dictionaries(st.text(max_size=8), st.text()), max_size=2)),
    max_size=4)))
def test_validate_message_fuzz(x):
    """Arbitrary input either validates to a clean message or raises InvalidMessageError, nothing else."""
    try:
        m = validate_message(x)
    except InvalidMessageError:
        return
    assert m["role"] in ("system", "user", "assistant", "tool") and isinstance(m["content"], str)
