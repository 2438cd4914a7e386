"""Store-only micro-benchmark: the cost of one turn's commit as the session's log grows.

Usage::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py

For each log size N it fills a session with N short messages (one commit), then times `--repeats`
turn commits, each adding one message (about 60 characters, like the soak's) and replacing a state blob
(77,340 bytes, the soak's δ-state) and the metadata, and prints the median wall and CPU ms per commit
through two paths of `SessionStore(SQLiteBackend)`:

* **append**: the normal store (LRU cache on): the log is compared with the cached one and only the new
  message is encoded and inserted;
* **full**: the same store with `cache_size=0`: every commit encodes the whole log, reads every stored row
  back to compare, decodes and deep-copies the whole record: the per-commit work of the store before
  append-only commits, kept as the fallback for logs that are not an extension.

The last line gives the ratio of the largest to the smallest size for both paths (about 1 means the
commit does not grow with the log).  No model, no torch.

With ``--soak-db ~/.cache/deltamem-agents/soak/soak.db`` it instead times whole `add_messages` turns
(model included, as in benchmarks/soak.py) on a *copy* of the soak's session, alternating the two paths
turn by turn so that both see the same log length and the same machine load::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py \
        --soak-db ~/.cache/deltamem-agents/soak/soak.db --turns 40
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deltamem_agents.runtime.store import SessionStore, SQLiteBackend

STATE = bytes(range(256)) * 302 + bytes(28)  # 77,340 bytes: the soak's δ-state blob
assert len(STATE) == 77_340


def message(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"Turn {i}: note that the apple code is {(i * 7919) % 10000}."}


def time_commits(store: SessionStore, sid: str, log: list[dict[str, str]], repeats: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of ``repeats`` commits that each append one message to ``sid``."""
    rec = store.backend.get(sid)
    assert rec is not None
    version, walls, cpus = rec.version, [], []
    for _ in range(repeats):
        log.append(message(len(log)))
        t0, c0 = time.perf_counter(), time.process_time()
        version = store.commit(sid, state=STATE, messages=log, metadata={"num_messages": len(log)},
                               expected_version=version).version
        walls.append((time.perf_counter() - t0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def bench_size(directory: Path, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per-commit (wall ms, CPU ms) of both paths on a fresh database holding one session of ``n`` messages."""
    store = SessionStore(SQLiteBackend(directory / f"bench-{n}.db"))
    log = [message(i) for i in range(n)]
    store.commit(store.get_or_create("s"), state=STATE, messages=log, metadata={"num_messages": n})
    out = {"append": time_commits(store, "s", log, repeats)}
    full = SessionStore(store.backend, cache_size=0)
    out["full"] = time_commits(full, "s", log, repeats)
    stored = store.backend.get("s")
    assert stored is not None and list(stored.messages) == log  # both paths wrote the same log
    store.close()
    return out


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included) through the backup API; ``src`` is not changed."""
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def time_turn(bot: Any, store: SessionStore, text: str) -> tuple[float, float]:
    """(wall s, CPU s) of one `add_messages` turn of the soak session committed through ``store``."""
    from soak import SESSION

    bot.store = store
    t0, c0 = time.perf_counter(), time.process_time()
    bot.add_messages([{"role": "user", "content": text}], session_id=SESSION)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_soak_turns(db: Path, turns: int) -> None:
    """Median `add_messages` wall and CPU ms per turn with each store path, alternating, on a copy of ``db``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from soak import SESSION, build_bot, user_text

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "soak.db"
        copy_database(db.expanduser(), copy)
        bot = build_bot("random", copy, 1024)
        stores = {"append": bot.store, "full": SessionStore(bot.store.backend, cache_size=0)}
        n0 = len(bot.history(SESSION))
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
        for _ in range(turns):
            for name, store in stores.items():
                store.invalidate(SESSION)  # the other path committed: re-read (untimed), refilling the cache
                n = len(store.snapshot(SESSION).messages)
                times[name].append(time_turn(bot, store, user_text(n)))
        stored = bot.history(SESSION)
        assert len(stored) == n0 + 2 * turns
    print(f"`add_messages` turns on a copy of {db} ({n0:,} messages at the start), {turns} turns per path, "
          "alternating:\n")
    print("| store path | wall ms, median | CPU ms, median |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        walls, cpus = [1e3 * w for w, _ in ts], [1e3 * c for _, c in ts]
        print(f"| {name} | {statistics.median(walls):.0f} | {statistics.median(cpus):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    ap.add_argument("--repeats", type=int, default=30, help="commits timed per size and path (median)")
    ap.add_argument("--dir", type=Path, default=None, help="where the database files go (default: a temp dir)")
    ap.add_argument("--soak-db", type=Path, default=None, help="time whole add_messages turns on a copy of it")
    ap.add_argument("--turns", type=int, default=40, help="with --soak-db: turns per store path")
    args = ap.parse_args()
    if args.soak_db is not None:
        bench_soak_turns(args.soak_db, args.turns)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = {n: bench_size(Path(tmp), n, args.repeats) for n in args.sizes}
    print("| messages in the log | append: wall ms | append: CPU ms | full: wall ms | full: CPU ms |")
    print("|---:|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n:,} | {r['append'][0]:.2f} | {r['append'][1]:.2f} | {r['full'][0]:.1f} | {r['full'][1]:.1f} |")
    first, last = rows[args.sizes[0]], rows[args.sizes[-1]]
    ratios = {path: [b / a for a, b in zip(first[path], last[path])] for path in ("append", "full")}
    print(f"\nratio {args.sizes[-1]:,} / {args.sizes[0]:,} messages: "
          f"append wall ×{ratios['append'][0]:.2f}, CPU ×{ratios['append'][1]:.2f}; "
          f"full wall ×{ratios['full'][0]:.1f}, CPU ×{ratios['full'][1]:.1f}")


if __name__ == "__main__":
    main()
