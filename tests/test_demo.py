"""The demo's columns run as parallel streams: each stream has its own lock, shared by the columns in it."""

from __future__ import annotations

from types import SimpleNamespace

from deltamem_agents import demo


def test_columns_get_one_lock_per_stream(monkeypatch):
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    model_lock = object()
    bots = [SimpleNamespace(batcher=SimpleNamespace(lock=model_lock)) for _ in range(4)]
    demo._streams([demo.Column(f"c{i}", b) for i, b in enumerate(bots)])
    locks = [b.batcher.lock for b in bots]
    assert model_lock not in locks
    assert locks[0] is locks[2] and locks[1] is locks[3] and locks[0] is not locks[1]


def test_one_cpu_gives_one_stream(monkeypatch):
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    bots = [SimpleNamespace(batcher=SimpleNamespace(lock=None)) for _ in range(4)] + [SimpleNamespace(batcher=None)]
    demo._streams([demo.Column(f"c{i}", b) for i, b in enumerate(bots)])
    assert len({id(b.batcher.lock) for b in bots[:4]}) == 1
    assert bots[4].batcher is None
