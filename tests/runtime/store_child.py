"""A second process on a shared session store, for the cross-process store tests.

    python store_child.py <store-url> <mode> <session-id> <n> <tag>

Modes: ``retry`` (n read-modify-commit turns, retrying on ConcurrentWriteError; prints the retries),
``locked`` (n turns under ``store.lock`` with no retry, the store's cache on: a conflict means the lock, or the
check of the cached copy under it, failed),
``own`` (n turns on its own session, checking each read is exactly what it last wrote),
``hold`` (take the session lock, print "locked", hold it until stdin closes or a line arrives).
"""

from __future__ import annotations

import sys

from deltamem_agents.errors import ConcurrentWriteError
from deltamem_agents.runtime.store_url import open_store


def turn(store, sid: str, tag: str, i: int, rec=None):
    rec = rec or store.get_or_create(sid)
    meta = dict(rec.metadata)
    meta["count"] = meta.get("count", 0) + 1
    return store.commit(rec, state=f"{tag}:{i}".encode() * 8, messages=[*rec.messages, {"tag": tag, "i": i}],
                        metadata=meta)


def main(url: str, mode: str, sid: str, n: int, tag: str) -> None:
    store = open_store(url, cache_size=4)
    if mode == "retry":
        retries = 0
        for i in range(n):
            while True:
                try:
                    turn(store, sid, tag, i)
                    break
                except ConcurrentWriteError:
                    retries += 1
        print(retries)
    elif mode == "locked":
        for i in range(n):
            with store.lock(sid):
                turn(store, sid, tag, i)
    elif mode == "own":
        rec = None
        for i in range(n):
            rec = turn(store, sid, tag, i, rec)
            got = store.backend.get(sid)
            assert got == rec, (got, rec)
            assert all(m["tag"] == tag for m in got.messages) and got.state == f"{tag}:{i}".encode() * 8
    elif mode == "hold":
        with store.lock(sid):
            print("locked", flush=True)
            sys.stdin.readline()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
