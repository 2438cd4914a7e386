"""Child process for tests/reliability/test_crash_safety.py: runs turns on a SQLite-backed DeltaMemChat and
reports on stdout, one line per event, so the parent can SIGKILL it at a known point.

    python crash_child.py DB SESSION MODE TURNS TAG

Each turn adds one user message `TAG note K ...` with add_messages. After every commit it prints
`COMMITTED <version> <sha256 of the stored state blob> <number of messages> <reloaded 0|1>`.
MODE:
  forward  commit TURNS turns, then start one more that stops inside the model forward, half-way through
           the decoder layers (half the layers have written their new state), printing IN_FORWARD;
  commit   commit TURNS turns, then start one more that stops inside the SQLite write transaction after the
           new state and message rows are written but before COMMIT, printing IN_COMMIT <version in the txn>;
  race     before the first commit print READY and wait for a line on stdin, then commit TURNS turns,
           retrying on ConcurrentWriteError (printing CONFLICT each time); DONE at the end.
In forward and commit mode the child sleeps at the stop point until the parent kills it.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from deltamem_agents.errors import ConcurrentWriteError
from deltamem_agents.runtime.store import SessionStore, SQLiteBackend
from tests.reliability._model import delta_model, make_bot, sha, user


def say(*words: object) -> None:
    print(*words, flush=True)


def message(tag: str, k: int) -> dict[str, str]:
    return user(f"{tag} note {k}: remember {17 * k + len(tag)}.")


def main(db: str, sid: str, mode: str, turns: int, tag: str) -> None:
    model, tok = delta_model()
    store = SessionStore(SQLiteBackend(db), cache_size=0)  # another process writes too: always read fresh
    bot = make_bot((model, tok), store)
    reloaded = True  # the first turn starts from whatever the store holds

    real_commit = store.commit

    def commit_after_go(*args, **kw):
        if mode == "race" and not getattr(commit_after_go, "went", False):
            commit_after_go.went = True
            say("READY")
            sys.stdin.readline()
        return real_commit(*args, **kw)

    store.commit = commit_after_go
    for k in range(turns):
        while True:
            try:
                bot.add_messages([message(tag, k)], session_id=sid)
                break
            except ConcurrentWriteError:  # the chat model dropped its live copy: the retry reloads
                say("CONFLICT")
                reloaded = True
        rec = store.backend.get(sid)
        say("COMMITTED", rec.version, sha(rec.state), len(rec.messages), int(reloaded))
        reloaded = False
    if mode == "race":
        say("DONE")
        return
    if mode == "forward":
        layers = model.model.layers
        layers[len(layers) // 2].register_forward_hook(lambda *a: (say("IN_FORWARD"), time.sleep(600)))
    elif mode == "commit":
        real_txn = store.backend._txn

        @contextmanager
        def stop_before_commit(write: bool):
            with real_txn(write) as conn:
                yield conn
                if write:  # the body ran: the new rows are in the transaction, COMMIT has not run
                    v = conn.execute("SELECT version FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
                    say("IN_COMMIT", v)
                    time.sleep(600)

        store.backend._txn = stop_before_commit
    bot.add_messages([message(tag, turns)], session_id=sid)
    say("NOT KILLED")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
