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

With ``--backends`` it compares SQLite and Postgres side by side: 1 and 8 writer threads (``--writers``),
each committing turns (one message, the 77 KB state, metadata: the append path) to a session of its own
through one `SessionStore` per backend; per-commit latency (median, mean, p95, max: SQLite's writers queue in
its busy handler, which shows in the tail) and throughput (commits/s over the burst).  Bursts alternate
between the backends, ``--rounds`` times, so machine load hits both.  Both are durable (SQLite WAL with
synchronous=FULL, Postgres with fsync and synchronous_commit on); the Postgres server is a fresh local one
on a unix socket (tests/runtime/pg_server.py), or ``--pg URL``::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py --backends
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
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


def burst(store: SessionStore, writers: int, commits: int) -> tuple[list[float], float]:
    """``writers`` threads, each committing ``commits`` turns to a fresh session of its own:
    (every commit's wall ms, the burst's wall s)."""
    sids = [f"w{i}-{uuid.uuid4().hex[:8]}" for i in range(writers)]
    recs = [store.commit(store.get_or_create(sid), state=STATE, messages=[message(0)], metadata={}) for sid in sids]
    lat: list[float] = []
    lock, start = threading.Lock(), threading.Barrier(writers + 1)

    def work(i: int) -> None:
        rec, log, mine = recs[i], [message(0)], []
        start.wait()
        for _ in range(commits):
            log.append(message(len(log)))
            t0 = time.perf_counter()
            rec = store.commit(rec, state=STATE, messages=log, metadata={"num_messages": len(log)})
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for sid in sids:
        assert store.backend.get(sid).version == commits + 1
        store.delete(sid)
    return lat, wall


def bench_backends(pg_url: str | None, writer_counts: list[int], commits: int, rounds: int) -> None:
    """SQLite vs Postgres commit latency and throughput at each writer count, bursts interleaved."""
    from deltamem_agents.runtime.store_postgres import PostgresBackend

    server = None
    if pg_url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.runtime.pg_server import start_postgres

        server = start_postgres(durable=True)
        pg_url = server.url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {"sqlite": SessionStore(SQLiteBackend(Path(tmp) / "bench.db")),
                      "postgres": SessionStore(PostgresBackend(pg_url, schema="bench_store",
                                                               pool_size=max(writer_counts)))}
            for store in stores.values():  # warm up: connections, prepared statements, file creation
                burst(store, max(writer_counts), 3)
            results: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
            for _ in range(rounds):
                for w in writer_counts:
                    for name, store in stores.items():
                        lat, wall = burst(store, w, commits)
                        lats, rates = results.setdefault((name, w), ([], []))
                        lats.extend(lat)
                        rates.append(w * commits / wall)
            for store in stores.values():
                store.close()
    finally:
        if server is not None:
            server.stop()
    print(f"turn commits (append path, 77 KB state), {commits} per writer and burst, {rounds} interleaved "
          f"rounds; Postgres: {'local server, unix socket' if server else 'given URL'}\n")
    print("| writers | backend | latency ms, median | latency ms, mean | latency ms, p95 | latency ms, max "
          "| commits/s, median |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for w in writer_counts:
        for name in stores:
            lats, rates = results[(name, w)]
            p95 = statistics.quantiles(lats, n=20)[-1]
            print(f"| {w} | {name} | {statistics.median(lats):.2f} | {statistics.mean(lats):.2f} | {p95:.2f} "
                  f"| {max(lats):.0f} | {statistics.median(rates):.0f} |")
    print()
    for w in writer_counts:
        (ls, rs), (lp, rp) = results[("sqlite", w)], results[("postgres", w)]
        print(f"{w} writer(s): Postgres / SQLite latency median ×{statistics.median(lp) / statistics.median(ls):.2f}, "
              f"mean ×{statistics.mean(lp) / statistics.mean(ls):.2f}; "
              f"throughput ×{statistics.median(rp) / statistics.median(rs):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    ap.add_argument("--repeats", type=int, default=30, help="commits timed per size and path (median)")
    ap.add_argument("--dir", type=Path, default=None, help="where the database files go (default: a temp dir)")
    ap.add_argument("--soak-db", type=Path, default=None, help="time whole add_messages turns on a copy of it")
    ap.add_argument("--turns", type=int, default=40, help="with --soak-db: turns per store path")
    ap.add_argument("--backends", action="store_true", help="compare SQLite and Postgres (latency, throughput)")
    ap.add_argument("--pg", default=None, help="with --backends: a Postgres URL (default: start a local server)")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 8], help="with --backends: writer threads")
    ap.add_argument("--commits", type=int, default=40, help="with --backends: commits per writer and burst")
    ap.add_argument("--rounds", type=int, default=3, help="with --backends: interleaved rounds")
    args = ap.parse_args()
    if args.backends:
        bench_backends(args.pg, args.writers, args.commits, args.rounds)
        return
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
