"""Time to first token through the HTTP server vs the in-process call, on the same loaded model.

Usage::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serve.py --repeats 15

One `DeltaMemChat` (the default SmolLM2-135M-Instruct + shipped adapter, in-memory sessions) is served by
uvicorn on a free loopback port in a background thread of this process. Each repeat runs, in alternating
order, the same first turn on a fresh session in both arms:

* **in-process**: ``chat.stream(message, session_id=...)`` until the first text chunk;
* **http**: ``POST /v1/chat/completions`` with ``stream: true`` (httpx, a kept-alive connection) until the
  first SSE event carrying content.

It prints the median time to first token of each arm and their ratio (the target: http within 10% of
in-process, ratio <= 1.10), and the same for the whole reply (``--max-tokens`` tokens). Arms alternate,
so machine load hits both; on a busy machine, read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import uuid

MESSAGE = "My sister is called Daphne and she lives in Oslo. Please remember that."


def _serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def in_process(chat, max_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    for ch in chat.stream(MESSAGE, session_id=f"local-{uuid.uuid4().hex}", max_new_tokens=max_tokens):
        if first is None and ch.text:
            first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


def over_http(client, url: str, max_tokens: int) -> tuple[float, float]:
    body = {"messages": [{"role": "user", "content": MESSAGE}], "max_tokens": max_tokens, "stream": True,
            "session_id": f"http-{uuid.uuid4().hex}"}
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    import httpx

    from deltamem_agents.chat.model import DeltaMemChat
    from deltamem_agents.serve import create_app

    chat = DeltaMemChat.from_default(in_memory=True)
    server, thread, url = _serve(create_app(chat))
    times: dict[str, list[tuple[float, float]]] = {"in-process": [], "http": []}
    with httpx.Client(timeout=120) as client:
        arms = {"in-process": lambda: in_process(chat, args.max_tokens),
                "http": lambda: over_http(client, url, args.max_tokens)}
        for _ in range(args.warmup):
            for fn in arms.values():
                fn()
        for i in range(args.repeats):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))
            for name in order:
                times[name].append(arms[name]())
    server.should_exit = True
    thread.join(timeout=10)

    med = {k: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v)) for k, v in times.items()}
    print(f"model {chat.model_name}, {args.repeats} interleaved repeats, first turn of a fresh session, "
          f"max_tokens={args.max_tokens}")
    for k, (ttft, whole) in med.items():
        print(f"  {k:>10}: time to first token {ttft * 1e3:8.1f} ms   whole reply {whole * 1e3:8.1f} ms")
    print(f"ratio http / in-process: time to first token {med['http'][0] / med['in-process'][0]:.3f}, "
          f"whole reply {med['http'][1] / med['in-process'][1]:.3f} (target: time to first token <= 1.10)")


if __name__ == "__main__":
    main()
