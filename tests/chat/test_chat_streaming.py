"""`deltamem_agents.chat.streaming`: the stream hold-back filter and the async bridge (pure Python, no model)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from deltamem_agents.chat.streaming import StreamHoldback, aiter_in_thread

# (stops, tools, raw deltas, final reply as logged, text shown while streaming, rest shown at the end)
HOLDBACK_CASES = [
    ([], False, ["a ", "b "], "a b c", "a b ", "c"),
    ([], False, ["Hello", " world"], "Hello world", "Hello world", ""),
    (["you"], True, ["Hello", " yo"], "Hello ", "Hello ", ""),  # 'yo' may start the stop sequence
    (["you"], False, ["Hello", " yo"], "Hello ", "Hello ", ""),  # the decoder then cut at the stop
    (["END"], False, ["ab", "E", "x"], "abEx", "abEx", ""),  # a false alarm is released
    ([], True, ["Hi", " <tool", "_call>\n{", "...}"], "Hi", "Hi", ""),  # the tag and the space before it
    ([], True, ["Sure.", "  ", "<", "tool"], "Sure.", "Sure.", ""),
    ([], True, ["<tool_call>", "{}"], "", "", ""),
    ([], True, ["a <b", "> c"], "a <b> c", "a <b> c", ""),  # '<' that does not open a tag
    ([], True, ["one ", "two "], "one two ", "one two", " "),  # trailing whitespace waits for the end
    ([], False, ["x<tool_call>"], "x<tool_call>", "x<tool_call>", ""),  # no tools: the tag is text
    (["\n\n"], True, ["para\n"], "para", "para", ""),
]


@pytest.mark.parametrize("stops,tools,deltas,final,shown,rest", HOLDBACK_CASES)
def test_holdback_shows_only_a_prefix_of_the_logged_reply(stops, tools, deltas, final, shown, rest):
    h = StreamHoldback(stops, tools=tools)
    got = "".join(h.push(d) for d in deltas)
    assert got == shown and h.emitted == shown
    assert h.rest(final) == rest
    if final.startswith(shown):
        assert got + h.rest(final) == final


def test_holdback_stops_after_a_tool_call_and_keeps_the_raw_text():
    h = StreamHoldback(tools=True)
    assert h.push("Ok <tool_call>") == "Ok" and h.closed
    assert h.push(' {"name": "f"}') == ""
    assert h.text == "Ok <tool_call>"  # what arrived after the tag is not collected either


def test_holdback_rest_is_empty_when_the_reply_does_not_extend_what_was_shown():
    h = StreamHoldback()
    h.push("abc")
    assert h.rest("xyz") == "" and h.rest("abcd") == "d"


def _collect(make, stop_after=None):
    async def main():
        out = []
        agen = aiter_in_thread(make)
        async for x in agen:
            out.append(x)
            if stop_after is not None and len(out) >= stop_after:
                break
        await agen.aclose()
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("items", [[], [1], [1, 2, 3], list(range(100)), ["a", None, {"k": 1}]])
def test_bridge_yields_every_item_in_order(items):
    assert _collect(lambda: iter(items)) == items


def test_bridge_runs_the_whole_iterator_in_one_worker_thread():
    caller = threading.get_ident()
    seen = []

    def gen():
        for i in range(5):
            seen.append(threading.get_ident())
            yield i

    assert _collect(gen) == [0, 1, 2, 3, 4]
    assert len(set(seen)) == 1 and seen[0] != caller


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_at", [0, 2])
def test_bridge_reraises_errors_after_the_items_before_them(fail_at):
    got = []

    def gen():
        for i in range(5):
            if i == fail_at:
                raise Boom(i)
            yield i

    async def main():
        async for x in aiter_in_thread(gen):
            got.append(x)

    with pytest.raises(Boom):
        asyncio.run(main())
    assert got == list(range(fail_at))


def test_bridge_reraises_errors_of_the_factory():
    def make():
        raise Boom("no iterator")

    with pytest.raises(Boom):
        _collect(make)


def test_leaving_early_closes_the_iterator_in_its_thread():
    closed = threading.Event()
    threads = []

    def gen():
        try:
            i = 0
            while True:
                threads.append(threading.get_ident())
                yield i
                i += 1
        finally:
            threads.append(threading.get_ident())
            closed.set()

    assert _collect(gen, stop_after=2) == [0, 1]
    assert closed.wait(5), "the generator was not closed"
    assert len(set(threads)) == 1  # closed by the thread that ran it (a turn lock is released there)


def test_bridge_copies_the_callers_context_variables():
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        var.set("caller")
        return [x async for x in aiter_in_thread(lambda: iter([var.get()]))]

    assert asyncio.run(main()) == ["caller"]


def test_the_event_loop_keeps_running_while_the_worker_blocks():
    release = threading.Event()

    def gen():
        release.wait(5)
        yield "done"

    async def main():
        ticks = 0

        async def consume():
            return [x async for x in aiter_in_thread(gen)]

        task = asyncio.create_task(consume())
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        release.set()
        return await task, ticks

    out, ticks = asyncio.run(main())
    assert out == ["done"] and ticks == 5
