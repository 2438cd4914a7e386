"""Load check: mixed requests over many sessions on two server processes sharing one Postgres store.

Usage::

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serve_load.py \
        --requests 200 --sessions 50 --clients 8

It starts a throw-away Postgres (tests/runtime/pg_server.py) and two ``deltamem-agents serve`` processes on
free loopback ports over the one ``postgresql://`` store (the default SmolLM2-135M-Instruct + shipped
adapter, or ``--model DIR``; a small ``--budget``/``--reserve`` so turns are quick). A pool of ``--clients``
threads (httpx) sends ``--requests`` requests, each to a random worker on a random session: chat turns
(``max_tokens`` 4, temperature 0), streamed turns, session reads (``GET /v1/sessions/{id}``) and a few forks.
Requests on one session may be in flight on both workers at once; the server serialises them, and one that
waits longer than ``--busy-timeout`` gets a 409, which the client retries (counted apart).

Each user turn carries a unique marker (``note n-<session>-<k>``). At the end every session is exported
through the API and checked: each turn answered 200 is in its session's log exactly once, in the order its
responses completed (otherwise a lost update), no log holds another session's marker (cross-talk; a fork
holds a prefix of its parent's), and no request ended in a 5xx or a connection error. It prints a table and
exits 1 on any lost update, cross-talk or error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.runtime.pg_server import start_postgres  # noqa: E402

KINDS = ("chat", "stream", "read", "fork")


@dataclass
class Session:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[tuple[float, str]] = field(default_factory=list)  # (completion time, marker) of 200 turns
    sent: set[str] = field(default_factory=set)  # every marker sent, answered or not
    forks: list[str] = field(default_factory=list)


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    conflicts: int = 0  # 409s, each retried
    errors: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(url: str, args, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "deltamem_agents.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--db", url, "--budget", str(args.budget), "--reserve", str(args.reserve),
           "--busy-timeout", str(args.busy_timeout), "--default-max-tokens", str(args.max_tokens),
           "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(log_dir / f"worker-{port}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {base} exited with {proc.returncode} before serving")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker {base} not healthy after {timeout:.0f}s")


class Client:
    """One client thread's view: sends a request, retries 409s, records outcomes."""

    def __init__(self, workers: list[str], sessions: dict[str, Session], stats: Stats, args) -> None:
        self.workers, self.sessions, self.stats, self.args = workers, sessions, stats, args
        self.local = threading.local()

    def http(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(timeout=httpx.Timeout(600, connect=30))
        return self.local.client

    def _error(self, what: str) -> None:
        with self.stats.lock:
            self.stats.errors.append(what)

    def run(self, job: tuple[int, str, str]) -> None:
        i, kind, sid = job
        sess = self.sessions[sid]
        if kind in ("read", "fork") and not sess.acked:
            kind = "chat"  # nothing stored yet to read or fork: a turn instead
        rng = random.Random(i)
        t0 = time.perf_counter()
        marker = f"note n-{sid}-{i}"
        while True:
            base = rng.choice(self.workers)
            try:
                status = self._send(kind, base, sid, marker, i)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                self._error(f"{kind} {sid} #{i} on {base}: {type(exc).__name__}: {exc}")
                return
            if status == 409:
                with self.stats.lock:
                    self.stats.conflicts += 1
                continue
            if status != 200:
                self._error(f"{kind} {sid} #{i} on {base}: HTTP {status}")
                return
            break
        with self.stats.lock:
            self.stats.ok += 1
            self.stats.latency[kind].append(time.perf_counter() - t0)

    def _send(self, kind: str, base: str, sid: str, marker: str, i: int) -> int:
        http, sess = self.http(), self.sessions[sid]
        if kind == "read":
            return http.get(f"{base}/v1/sessions/{sid}").status_code
        if kind == "fork":
            to = f"{sid}-fork-{i}"
            r = http.post(f"{base}/v1/sessions/{sid}/fork", json={"to": to})
            if r.status_code == 200:
                with sess.lock:
                    sess.forks.append(to)
            return r.status_code
        body = {"model": "smollm2-135m-instruct", "session_id": sid, "max_tokens": self.args.max_tokens,
                "temperature": 0, "messages": [{"role": "user", "content": marker}]}
        with sess.lock:
            sess.sent.add(marker)
        if kind == "chat":
            r = http.post(f"{base}/v1/chat/completions", json=body)
            if r.status_code == 200:
                r.json()["choices"][0]["message"]
        else:
            body["stream"] = True
            with http.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    return r.status_code
                done = False
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"error"' in line and "error" in json.loads(line[6:]):
                        raise ValueError(f"error event in stream: {line[:200]}")
                    done = done or line == "data: [DONE]"
                if not done:
                    raise ValueError("stream ended without [DONE]")
        if r.status_code == 200:
            with sess.lock:
                sess.acked.append((time.perf_counter(), marker))
        return r.status_code


def _user_markers(doc: dict) -> list[str]:
    return [m["content"] for m in doc["messages"] if m["role"] == "user"]


def verify(workers: list[str], sessions: dict[str, Session]) -> tuple[int, int, list[str]]:
    """(lost updates, cross-talk, problems) from each session's export document, read through the API."""
    lost = cross = 0
    problems: list[str] = []
    all_markers = {m: sid for sid, s in sessions.items() for m in s.sent}
    with httpx.Client(timeout=120) as http:
        def export(sid: str) -> dict | None:
            r = http.get(f"{random.choice(workers)}/v1/sessions/{sid}/export")
            if r.status_code == 404:
                return None
            r.raise_for_status()
            return r.json()

        for sid, sess in sessions.items():
            want = [m for _, m in sorted(sess.acked)]
            doc = export(sid)
            got = _user_markers(doc) if doc is not None else []
            roles = [m["role"] for m in (doc or {"messages": []})["messages"]]
            if roles != ["user", "assistant"] * (len(roles) // 2):
                problems.append(f"{sid}: roles do not alternate user/assistant")
            foreign = [m for m in got if all_markers.get(m) != sid]
            cross += len(foreign)
            if foreign:
                problems.append(f"{sid}: foreign markers {foreign[:3]}")
            own = [m for m in got if all_markers.get(m) == sid]
            missing = [m for m in want if own.count(m) != 1]
            lost += len(missing)
            if missing:
                problems.append(f"{sid}: acked turns missing or duplicated {missing[:3]}")
            elif own != want:
                extra = [m for m in own if m not in want]  # turns that ended in an error, still committed
                if [m for m in own if m in want] != want:
                    lost += 1
                    problems.append(f"{sid}: log order {own} != response order {want}")
                elif extra:
                    problems.append(f"{sid}: unacknowledged turns in the log {extra[:3]}")
            for fork in sess.forks:
                fdoc = export(fork)
                fgot = _user_markers(fdoc) if fdoc is not None else None
                if fgot is None or fgot != got[:len(fgot)]:
                    cross += 1
                    problems.append(f"{fork}: not a prefix of {sid}'s log: {fgot}")
    return lost, cross, problems


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--workers", type=int, default=2, help="server processes")
    ap.add_argument("--model", default=None, help="a local Hugging Face model dir (default: SmolLM2-135M)")
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--reserve", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--busy-timeout", type=float, default=2.0)
    ap.add_argument("--mix", default="0.6,0.2,0.15,0.05", help="shares of chat,stream,read,fork")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    weights = [float(x) for x in args.mix.split(",")]
    sids = [f"s{j:03d}" for j in range(args.sessions)]
    jobs = [(i, rng.choices(KINDS, weights)[0], rng.choice(sids)) for i in range(args.requests)]
    sessions = {sid: Session() for sid in sids}
    stats = Stats()

    pg = start_postgres(durable=True)
    log_dir = Path(tempfile.mkdtemp(prefix="deltamem-serve-load-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"postgres: {pg.how}; worker logs in {log_dir}", flush=True)
        started = [start_worker(pg.url, args, log_dir) for _ in range(args.workers)]
        procs = [p for p, _ in started]
        workers = [base for _, base in started]
        t_load = time.perf_counter()
        for p, base in started:
            wait_healthy(p, base)
        print(f"{len(workers)} workers up in {time.perf_counter() - t_load:.1f}s: {' '.join(workers)}", flush=True)

        client = Client(workers, sessions, stats, args)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client.run, jobs))
        wall = time.perf_counter() - t0
        lost, cross, problems = verify(workers, sessions)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        pg.stop()

    for line in stats.errors[:20] + problems[:20]:
        print("  !", line)
    kinds = {k: len(v) for k, v in stats.latency.items()}
    turns = sum(len(s.acked) for s in sessions.values())
    rows = [("requests", f"{args.requests} ({', '.join(f'{k} {n}' for k, n in kinds.items())})"),
            ("sessions", f"{args.sessions} (+{sum(len(s.forks) for s in sessions.values())} forks)"),
            ("workers", f"{len(workers)} (one Postgres store), {args.clients} concurrent clients"),
            ("200s", f"{stats.ok} ({turns} turns)"),
            ("409s (retried)", str(stats.conflicts)),
            ("errors", str(len(stats.errors))),
            ("lost updates", str(lost)),
            ("cross-talk", str(cross)),
            ("wall time", f"{wall:.1f} s"),
            ("requests/s", f"{args.requests / wall:.2f}")]
    for k in KINDS:
        xs = stats.latency[k]
        if xs:
            rows.append((f"{k} p50 / p95", f"{_pct(xs, 50):.2f} s / {_pct(xs, 95):.2f} s"))
    width = max(len(a) for a, _ in rows)
    print(f"| {'':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for a, b in rows:
        print(f"| {a:<{width}} | {b} |")
    return 1 if (lost or cross or stats.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
