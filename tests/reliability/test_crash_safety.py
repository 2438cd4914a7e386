"""Crash safety: a child process running turns on a SQLite-backed DeltaMemChat is killed
with SIGKILL in the middle of a turn (inside the model forward that writes the δ-state; inside the SQLite
write transaction, after the new rows are written but before COMMIT). The parent reopens the store: the
last committed state and message log are intact, bit for bit, and the next turn continues from them.
Two processes writing one session are serialised (SQLite write lock) or rejected (ConcurrentWriteError,
StoreError), and the stored state is always exactly the state of the stored log.
The children load the real model (about 10 s each); see crash_child.py for what they print.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from deltamem_agents.core.state import DeltaState
from deltamem_agents.errors import StoreError
from deltamem_agents.runtime.store import MemoryBackend, SessionStore, SQLiteBackend
from tests.reliability._model import make_bot, max_rel_diff, sha
from tests.reliability.crash_child import message

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")
TOL = 1e-6  # relative; parent and child run the same ops with the same thread count


@dataclass(order=True)
class Commit:
    version: int
    digest: str
    n_messages: int
    reloaded: bool
    tag: str


class Child:
    """A crash_child.py process; its stdout lines are read by a thread so waits can time out."""

    def __init__(self, tmp_path: Path, db: Path, sid: str, mode: str, turns: int, tag: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "DELTAMEM_TEST_THREADS": str(torch.get_num_threads())}
        self.tag, self.errfile = tag, tmp_path / f"child-{tag}.err"
        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), str(db), sid, mode, str(turns), tag],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env, cwd=REPO)
        self.lines: queue.Queue = queue.Queue()
        self.commits: list[Commit] = []
        self.conflicts = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.split())
        self.lines.put(None)

    def wait_for(self, word: str, timeout: float = 300.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child {self.tag}: no {word} within {timeout} s") from None
            if item is None:
                raise AssertionError(f"child {self.tag} exited ({self.proc.wait()}) before {word}:\n"
                                     + self.errfile.read_text()[-3000:])
            if item and item[0] == "COMMITTED":
                self.commits.append(Commit(int(item[1]), item[2], int(item[3]), item[4] == "1", self.tag))
            elif item and item[0] == "CONFLICT":
                self.conflicts += 1
            if item and item[0] == word:
                return item

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(60) == -signal.SIGKILL


@pytest.fixture
def spawn(tmp_path):
    started: list[Child] = []

    def start(*args) -> Child:
        started.append(Child(tmp_path, *args))
        return started[-1]

    yield start
    for child in started:  # never leave one of ours behind, whatever happened
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(60)


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def replay(model_tok, sid: str, msgs: list[dict], restarts: set[int]) -> DeltaState:
    """The turns one message at a time in this process; a fresh chat model (as after a restart or a dropped
    live copy) before each turn index in `restarts`."""
    store, bot = SessionStore(MemoryBackend()), None
    for k, m in enumerate(msgs):
        if bot is None or k in restarts:
            bot = make_bot(model_tok, store)
        bot.add_messages([m], session_id=sid)
    return bot.state(sid)


def check_recovered(db: Path, child: Child, model_tok) -> None:
    """After the kill: last commit intact and loadable; the killed turn, done again, continues from it."""
    assert integrity(db) == "ok"
    last = child.commits[-1]
    assert (last.version, last.n_messages) == (2, 2)
    store = SessionStore(SQLiteBackend(db))
    rec = store.get("crash")
    assert rec.version == 2 and sha(rec.state) == last.digest  # the state blob of the last commit, bit for bit
    assert list(rec.messages) == [message("A", k) for k in range(2)]
    bot = make_bot(model_tok, store)
    assert bot.history("crash") == list(rec.messages)
    assert bot.state("crash").equal(DeltaState.from_bytes(rec.state)[0])
    bot.add_messages([message("A", 2)], session_id="crash")
    after = store.get("crash")
    assert after.version == 3 and list(after.messages) == [message("A", k) for k in range(3)]
    # the same turns in one process, with a restart before the third, give the same states
    msgs = [message("A", k) for k in range(3)]
    assert max_rel_diff(DeltaState.from_bytes(rec.state)[0], replay(model_tok, "crash", msgs[:2], set())) <= TOL
    assert max_rel_diff(bot.state("crash"), replay(model_tok, "crash", msgs, {2})) <= TOL


def test_sigkill_inside_the_forward_of_a_turn(tmp_path, spawn, delta_model_tok):
    db = tmp_path / "sessions.db"
    child = spawn(db, "crash", "forward", 2, "A")
    child.wait_for("IN_FORWARD")  # half of the layers have written their new state slices
    child.sigkill()
    check_recovered(db, child, delta_model_tok)


def test_sigkill_inside_the_commit_transaction(tmp_path, spawn, delta_model_tok):
    db = tmp_path / "sessions.db"
    other = SQLiteBackend(db, timeout=0.2)  # another process (this one); opened first: opening needs the write lock
    child = spawn(db, "crash", "commit", 2, "A")
    _, version = child.wait_for("IN_COMMIT")
    assert int(version) == 3  # inside the child's transaction the new version is already written
    assert other.get("crash").version == 2  # readers see the last commit, never the half-done one
    with pytest.raises(StoreError, match="locked"):  # a second writer is held off, then rejected
        other.commit("crash", state=b"x", messages=[], metadata={}, expected_version=2)
    other.close()
    child.sigkill()
    check_recovered(db, child, delta_model_tok)


def test_two_processes_writing_one_session_never_tear(tmp_path, spawn, delta_model_tok):
    db, turns = tmp_path / "sessions.db", 3
    a, b = spawn(db, "shared", "race", turns, "A"), spawn(db, "shared", "race", turns, "B")
    a.wait_for("READY")
    b.wait_for("READY")  # both have computed their first turn on the empty session
    a.send("go")
    b.send("go")
    a.wait_for("DONE")
    b.wait_for("DONE")
    assert a.proc.wait(60) == 0 and b.proc.wait(60) == 0
    assert a.conflicts + b.conflicts >= 1  # the second of the two first commits was rejected, then redone
    commits = sorted(a.commits + b.commits)
    assert [c.version for c in commits] == list(range(1, 2 * turns + 1))  # every version committed once
    assert all(c.n_messages == c.version for c in commits)  # each commit appended to the log it had read
    rec = SQLiteBackend(db).get("shared")
    assert rec.version == 2 * turns and sha(rec.state) == commits[-1].digest
    log = list(rec.messages)
    for child in (a, b):  # each writer's messages are all there, once, in its order, at the versions it wrote
        assert [m for m in log if m["content"].startswith(child.tag + " ")] == [
            message(child.tag, k) for k in range(turns)]
    assert all(log[c.version - 1]["content"].startswith(c.tag + " ") for c in commits)
    # the stored state is the state of exactly that log, turn by turn, restarting where a writer reloaded
    restarts = {c.version - 1 for c in commits if c.reloaded}
    assert max_rel_diff(DeltaState.from_bytes(rec.state)[0], replay(delta_model_tok, "shared", log, restarts)) <= TOL
    assert integrity(db) == "ok"
