"""Isolation under concurrency: 50 sessions on ONE loaded real model, driven at the same time
by a thread pool (half of them) and by asyncio tasks (the other half), their turns interleaved, end exactly
where each session run alone ends (replies, message log, δ-state, export); the public API never lets one
session id read or write another's state.

The chat models use live_sessions=64 (>= the 50 sessions): a session pushed out of the live LRU has its
window's KV cache rebuilt on its next turn, by re-reading the window with the *current* state, which changes
later numbers by ~1e-3 relative (the same thing happens after a process restart). That depends only on the
session's own data, never on another session's, but it would make "equals the run alone" untestable.
"""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from deltamem_agents.core.state import DeltaState
from deltamem_agents.errors import InvalidSessionIdError, SessionExistsError
from deltamem_agents.runtime.store import MemoryBackend, SessionStore, parse_export
from tests.reliability._model import make_bot, max_rel_diff, user

pytestmark = pytest.mark.slow
N = 50
SIDS = [f"s{i:02d}" for i in range(N)]
TOL = 1e-6  # relative; in practice the states come out bitwise equal (same ops, same order)


def script(i: int) -> list[tuple[str, Any]]:
    """Two written turns per session; every fifth session also gets a (2-token) reply."""
    turns: list[tuple[str, Any]] = [("add", [user(f"Note {i}: my locker code is {1000 + 37 * i}.")]),
                                    ("add", [user(f"My favourite number is {i * i % 97}.")])]
    if i % 5 == 0:
        turns.append(("chat", "What is my locker code?"))
    return turns


SCRIPTS = {sid: script(i) for i, sid in enumerate(SIDS)}
ROUNDS = max(map(len, SCRIPTS.values()))


def run_turn(bot: Any, sid: str, turn: tuple[str, Any]) -> str | None:
    kind, arg = turn
    if kind == "add":
        bot.add_messages(arg, session_id=sid)
        return None
    return bot.chat(arg, session_id=sid, max_new_tokens=2).text


class InFlight:
    """Counts turns running at once (peak) and records the order turns finish in."""

    def __init__(self) -> None:
        self.lock, self.now, self.peak, self.done = threading.Lock(), 0, 0, []

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self, sid: str) -> None:
        with self.lock:
            self.now -= 1
            self.done.append(sid)

    def switches(self) -> int:
        return sum(a != b for a, b in zip(self.done, self.done[1:]))


@pytest.fixture(scope="module")
def alone(delta_model_tok):
    """Each session run by itself on a fresh chat model: (replies, state, history)."""
    out = {}
    for sid in SIDS:
        bot = make_bot(delta_model_tok, SessionStore(MemoryBackend()))
        replies = [run_turn(bot, sid, t) for t in SCRIPTS[sid]]
        out[sid] = (replies, bot.state(sid), bot.history(sid))
    return out


def drive_with_threads(bot: Any, sids: list[str], fl: InFlight, replies: dict[str, list]) -> None:
    """16 pool threads, round by round (every session's turn r before any turn r+1), shuffled each round."""
    def work(sid: str, turn: tuple[str, Any]) -> str | None:
        fl.enter()
        try:
            return run_turn(bot, sid, turn)
        finally:
            fl.leave(sid)

    with ThreadPoolExecutor(max_workers=16) as ex:
        for r in range(ROUNDS):
            order = [sid for sid in sids if r < len(SCRIPTS[sid])]
            random.Random(r).shuffle(order)
            futures = [(sid, ex.submit(work, sid, SCRIPTS[sid][r])) for sid in order]
            for sid, fut in futures:
                replies[sid].append(fut.result())


async def drive_with_asyncio(bot: Any, sids: list[str], fl: InFlight, replies: dict[str, list]) -> None:
    """One task per session running its turns back to back (add_messages via asyncio.to_thread, replies via
    achat or astream); the tasks interleave freely on the event loop."""
    async def session(i: int, sid: str) -> None:
        for kind, arg in SCRIPTS[sid]:
            fl.enter()
            try:
                if kind == "add":
                    await asyncio.to_thread(bot.add_messages, arg, session_id=sid)
                    replies[sid].append(None)
                elif i % 4 == 1:
                    replies[sid].append((await bot.achat(arg, session_id=sid, max_new_tokens=2)).text)
                else:
                    chunks = [c.text async for c in bot.astream(arg, session_id=sid, max_new_tokens=2)]
                    replies[sid].append("".join(chunks))
            finally:
                fl.leave(sid)

    await asyncio.gather(*(session(SIDS.index(sid), sid) for sid in sids))


@pytest.fixture(scope="module")
def concurrent(delta_model_tok):
    """All 50 sessions on ONE chat model at once: the even ones driven by a thread pool from this thread, the
    odd ones by asyncio tasks on an event loop running in another thread, both at the same time.
    (One mixed run rather than one run per mechanism: each run of 50 sessions costs ~35 s of CPU here.)"""
    bot, fl = make_bot(delta_model_tok, SessionStore(MemoryBackend())), InFlight()
    replies: dict[str, list] = {sid: [] for sid in SIDS}
    errors: list[BaseException] = []

    def loop_thread() -> None:
        try:
            asyncio.run(drive_with_asyncio(bot, SIDS[1::2], fl, replies))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    t = threading.Thread(target=loop_thread)
    t.start()
    try:
        drive_with_threads(bot, SIDS[0::2], fl, replies)
    finally:
        t.join()
    if errors:
        raise errors[0]
    return bot, replies, fl


def check_matches_alone(bot: Any, replies: dict[str, list], alone: dict, tmp_path) -> None:
    assert bot.sessions() == SIDS
    worst = 0.0
    for sid in SIDS:
        ref_replies, ref_state, ref_history = alone[sid]
        assert replies[sid] == ref_replies, sid
        history, state = bot.history(sid), bot.state(sid)
        assert history == ref_history, sid
        worst = max(worst, max_rel_diff(state, ref_state))
        # the export carries this session's own id, log and state, nothing else
        got_sid, blob, msgs, _ = parse_export(bot.export_session(sid, tmp_path / f"{sid}.json").read_bytes())
        assert (got_sid, msgs) == (sid, history)
        assert DeltaState.from_bytes(blob)[0].equal(state)
    assert worst <= TOL, f"a session's state drifted from its run alone by {worst:.2e} (relative)"
    # the comparisons above can tell sessions apart: any two sessions' states differ by far more than TOL
    for a, b in zip(SIDS, SIDS[1:] + SIDS[:1]):
        diff = (alone[a][1].S - alone[b][1].S).abs().max() / alone[b][1].S.abs().max()
        assert diff > 1e3 * TOL, (a, b)
    assert any(r is not None and r != "" for rs, _, _ in alone.values() for r in rs)


def test_threads_and_asyncio_match_sessions_run_alone(concurrent, alone, tmp_path):
    bot, replies, fl = concurrent
    assert fl.peak > 2, "turns never overlapped: the test did not exercise concurrency"
    assert fl.switches() > N, "sessions did not interleave"
    evens = [i for i, sid in enumerate(fl.done) if SIDS.index(sid) % 2 == 0]
    odds = [i for i, sid in enumerate(fl.done) if SIDS.index(sid) % 2 == 1]
    assert evens[0] < odds[-1] and odds[0] < evens[-1], "the thread pool and the event loop did not overlap"
    check_matches_alone(bot, replies, alone, tmp_path)


def test_public_api_never_crosses_sessions(concurrent, alone, tmp_path):
    bot = concurrent[0]
    before = {sid: (bot.history(sid), bot.state(sid)) for sid in ("s01", "s02")}
    with pytest.raises(SessionExistsError):  # forking onto an existing session does not overwrite it
        bot.fork("s01", "s02")
    with pytest.raises(SessionExistsError):  # nor does importing another session's export onto it
        bot.import_session(bot.export_session("s01", tmp_path / "s01.json"), "s02")
    for bad in ("s01/../s02", "../s02", "s02'; --", "s0%", "s02\x00", " s02"):
        with pytest.raises(InvalidSessionIdError):
            bot.history(bad)
        with pytest.raises(InvalidSessionIdError):
            bot.state(bad)
    assert bot.state("nobody-here") is None and "nobody-here" not in bot.sessions()  # reading never creates
    bot.fork("s01", "victim")  # a copy evolves and dies alone
    bot.add_messages([user("Only the copy hears this.")], session_id="victim")
    assert bot.delete("victim") and bot.history("victim") == []
    for sid, (history, state) in before.items():
        assert bot.history(sid) == history and bot.state(sid).equal(state)
        assert max_rel_diff(state, alone[sid][1]) <= TOL


def test_state_read_during_a_turn_is_never_stale(delta_model_tok):
    """Regression: state() used to load a session outside its turn lock. If the session had left the live
    cache while a turn was running, it returned the state from before that turn and left that stale copy
    live, so the session's next turn failed with ConcurrentWriteError."""
    bot = make_bot(delta_model_tok, SessionStore(MemoryBackend()), live_sessions=1)
    bot.add_messages([user("My cat is called Miso.")], session_id="a")
    entered, release = threading.Event(), threading.Event()
    real_commit = bot.store.commit

    def gated_commit(rec_or_id: Any, **kw: Any) -> Any:  # holds the turn on "a" just before its commit
        if rec_or_id == "a" and not release.is_set():
            entered.set()
            release.wait(60)
        return real_commit(rec_or_id, **kw)

    bot.store.commit = gated_commit
    turn = threading.Thread(target=bot.add_messages, args=([user("My dog is called Rex.")],),
                            kwargs={"session_id": "a"})
    turn.start()
    assert entered.wait(60)
    bot.add_messages([user("I live in Lisbon.")], session_id="b")  # pushes "a" out of the live cache
    seen: list[DeltaState] = []
    reader = threading.Thread(target=lambda: seen.append(bot.state("a")))
    reader.start()
    reader.join(2.0)  # a reader that does not wait for the turn is done by now
    release.set()
    turn.join(60)
    reader.join(60)
    committed = DeltaState.from_bytes(bot.store.get("a").state)[0]
    assert seen[0].equal(committed), "state() returned the state from before the running turn"
    bot.add_messages([user("Rex is brown.")], session_id="a")  # no stale live copy: no ConcurrentWriteError
    assert [m["content"] for m in bot.history("a")][-2:] == ["My dog is called Rex.", "Rex is brown."]



def test_threads_writing_one_session_are_serialised(delta_model_tok):
    """Four threads adding to the SAME session at once: every turn lands once, each writer's in its order,
    and the state is exactly the state of the resulting log written turn by turn."""
    bot = make_bot(delta_model_tok, SessionStore(MemoryBackend()))
    barrier, errors = threading.Barrier(4), []

    def writer(w: int) -> None:
        try:
            barrier.wait()
            for k in range(2):
                bot.add_messages([user(f"Writer {w} says {k}.")], session_id="shared")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    log = bot.history("shared")
    for w in range(4):
        assert [m["content"] for m in log if m["content"].startswith(f"Writer {w} ")] == [
            f"Writer {w} says {k}." for k in range(2)]
    assert len(log) == 8 and bot.store.get("shared").version == 8
    ref = make_bot(delta_model_tok, SessionStore(MemoryBackend()))
    for m in log:
        ref.add_messages([m], session_id="shared")
    assert max_rel_diff(bot.state("shared"), ref.state("shared")) <= TOL
