"""`new_messages` costs O(given) message keys, and gives exactly what the naive O(log) version gives."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltamem_agents.errors import InvalidMessageError
from deltamem_agents.runtime import history
from deltamem_agents.runtime.history import message_key, new_messages


def naive_new_messages(log, given_msgs, mode="auto"):
    """The previous implementation, kept verbatim as the reference: keys for the whole log every call."""
    if mode == "new" or not log:
        return list(given_msgs)
    L, G = [message_key(m) for m in log], [message_key(m) for m in given_msgs]
    if G[:len(L)] == L:
        return list(given_msgs[len(L):])
    if mode == "full":
        raise InvalidMessageError("full")
    if mode != "auto":
        raise ValueError(mode)
    for k in range(min(len(L), len(G)), 0, -1):
        if G[:k] == L[-k:]:
            return list(given_msgs[k:])
    last = [i for i, g in enumerate(G) if g == L[-1]]
    if last:
        return list(given_msgs[last[-1] + 1:])
    return list(given_msgs)


def _call(name: str, arg: int) -> dict:
    return {"id": f"c{arg}", "type": "function", "function": {"name": name, "arguments": json.dumps({"x": arg})}}


# a tiny alphabet so that equal messages (and so every branch of the policy) come up often
message = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant"]),
              st.sampled_from(["a", "b", "c"])),
    st.builds(lambda n, x: {"role": "assistant", "content": "", "tool_calls": [_call(n, x)]},
              st.sampled_from(["f", "g"]), st.integers(0, 1)),
    st.builds(lambda i, c: {"role": "tool", "content": c, "tool_call_id": f"c{i}"}, st.integers(0, 1),
              st.sampled_from(["a", "ok"])),
)


@st.composite
def log_and_given(draw):
    log = draw(st.lists(message, max_size=12))
    how = draw(st.sampled_from(["full", "suffix", "edited", "random", "slice"]))
    extra = draw(st.lists(message, max_size=4))
    if how == "full":
        g = log + extra
    elif how == "suffix":
        g = log[draw(st.integers(0, len(log))):] + extra
    elif how == "edited" and log:
        g = list(log)
        g[draw(st.integers(0, len(log) - 1))] = draw(message)
        g += extra
    elif how == "slice":
        i = draw(st.integers(0, len(log)))
        g = log[i:draw(st.integers(i, len(log)))] + extra
    else:
        g = draw(st.lists(message, max_size=12))
    return log, g


@settings(max_examples=600, deadline=None)
@given(log_and_given(), st.sampled_from(["auto", "full", "new", "bogus"]))
def test_new_messages_equals_the_naive_computation(case, mode):
    log, g = case
    try:
        want = naive_new_messages(log, g, mode)
    except (InvalidMessageError, ValueError) as e:
        with pytest.raises(type(e)):
            new_messages(log, g, mode)
        return
    assert new_messages(log, g, mode) == want


@pytest.mark.parametrize("n_given", [1, 3])
def test_new_messages_keys_only_as_many_log_messages_as_given(monkeypatch, n_given):
    """A turn that sends only its new messages costs O(new), not O(log) (here: a 5,000-message log)."""
    log = [{"role": "user" if i % 2 else "assistant", "content": f"message {i}"} for i in range(5000)]
    g = [{"role": "user", "content": f"new {i}"} for i in range(n_given)]
    calls = []

    def counting_key(m):
        calls.append(1)
        return message_key(m)

    monkeypatch.setattr(history, "message_key", counting_key)
    assert new_messages(log, g) == g
    assert len(calls) <= 2 * n_given + 1
    calls.clear()
    assert new_messages(log, log + g) == g  # the full history resent: O(given) is O(log) here, as it must be
    assert len(calls) == len(log) + len(log + g)
