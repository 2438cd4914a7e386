"""Long sessions keep a bounded amount of live memory (docs/soak.md "RSS growth: diagnosis").

A tiny random Llama with δ-mem on the real tokenizer and a real SQLite store runs many turns through a small
window (an eviction every few turns). Between an early and a late turn, the live torch tensors must be the
same number (the KV cache and δ-state are replaced, not accumulated), gc-tracked objects may grow only by
the message log, and every per-session cache stays at its size. The runtime also hands freed memory back
to the OS once per eviction (runtime/memtrim.py). Nothing here is timed.
"""

from __future__ import annotations

import gc
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch

from deltamem_agents.chat.model import DeltaMemChat
from deltamem_agents.runtime import memtrim, session
from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
from deltamem_agents.runtime.window import WindowPolicy
from tests.conftest import tiny_ssw_on_real_tokenizer


def _live() -> tuple[int, int]:
    gc.collect()
    objs = gc.get_objects()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = sum(isinstance(o, torch.Tensor) for o in objs)
    return tensors, len(objs)


def _many_turns(db_path: str) -> dict:
    """The measurement, in a fresh process: the counts are of the whole interpreter, so threads and lazy imports
    left by other tests in the same process must not be counted."""
    torch.set_num_threads(1)
    model, tok = tiny_ssw_on_real_tokenizer()
    trims: list[int] = []
    session.release_free_memory = lambda: trims.append(1) or True
    bot = DeltaMemChat(model, tok, store=SessionStore(SQLiteBackend(db_path), cache_size=4),
                       policy=WindowPolicy(budget=160, reserve=16), system_prompt="Be brief.")

    def turn(i: int) -> None:
        if i % 25 == 24:
            bot.chat(f"Turn {i}: and now?", session_id="s", max_new_tokens=3)
        else:
            bot.add_messages([{"role": "user", "content": f"Turn {i}: the code is {(i * 7919) % 10000}."}],
                             session_id="s")

    starts = []
    for i in range(60):
        turn(i)
        starts.append(bot._live["s"].window_start)
    tensors0, objs0 = _live()
    n0 = len(bot._live["s"].messages)
    for i in range(60, 200):
        turn(i)
        starts.append(bot._live["s"].window_start)
    tensors1, objs1 = _live()
    return {"tensors": (tensors0, tensors1), "objs": (objs0, objs1), "n": (n0, len(bot._live["s"].messages)),
            "evictions": sum(b > a for a, b in zip(starts, starts[1:])), "trims": len(trims),
            "cache_size": bot.store.cache_info()["size"], "renderers": len(bot.runner._renderers),
            "live": len(bot._live), "turn_locks": len(bot.store._turn_locks)}


def test_live_memory_stays_bounded_over_many_turns(tmp_path):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        r = pool.submit(_many_turns, str(tmp_path / "s.db")).result()
    (tensors0, tensors1), (objs0, objs1), (n0, n1) = r["tensors"], r["objs"], r["n"]
    assert r["evictions"] >= 20  # the window really turned over many times
    assert tensors1 == tensors0, "live tensors grew: a KV cache, state or activation is being kept per turn"
    # each logged message is held as a dict by the live conversation and by the store's cache (plus the
    # renderer's token cache entry): a few gc objects per message, nothing per token or per forward
    assert objs1 - objs0 <= 6 * (n1 - n0), (objs1 - objs0, n1 - n0)
    assert r["cache_size"] <= 4
    assert r["renderers"] == 1 and r["live"] == 1
    assert r["turn_locks"] == 0  # per-session turn locks are dropped when unused
    assert r["trims"] == r["evictions"]  # one malloc_trim per eviction, none on ordinary turns


def test_release_free_memory_respects_the_switch(monkeypatch):
    monkeypatch.setenv("DELTAMEM_MALLOC_TRIM", "0")
    assert memtrim.release_free_memory() is False
    monkeypatch.delenv("DELTAMEM_MALLOC_TRIM")
    assert memtrim.release_free_memory() in (True, False)  # runs (glibc) or is a no-op elsewhere
