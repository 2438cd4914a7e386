"""Benchmark: N concurrent session turns decoded serially (one forward per token per session, as the model lock
serves them today) vs batched (runtime/batched.py: one forward per step for all sessions), side by side.

Usage::

    .venv/bin/python benchmarks/bench_batched.py --threads 2 --sessions 8 --new-tokens 32 --rounds 2

The real default backbone (SmolLM2-135M-Instruct) with the shipped adapter. Every round builds the same N
sessions twice (each with a different earlier exchange, so window lengths differ), then runs one greedy turn
per session: serially with `SessionRunner.respond`, batched with `respond_batch`, and through `TurnBatcher`
from N threads at once; the arms are interleaved (their order alternates by round) so machine load hits
all of them. Reported: aggregate generated tokens per second of whole turns (prefill + decode + commit) per
arm and the ratios, in wall time and in process CPU time (on a loaded machine the CPU-time ratio is the
steadier one: it does not count the time the process waits for a core); the generated token ids are asserted equal across arms.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from deltamem_agents.chat.loading import load_model
from deltamem_agents.runtime.batched import BatchedDecoder, Turn, TurnBatcher, respond_batch
from deltamem_agents.runtime.decode import Engine, Generation, GenerationConfig
from deltamem_agents.runtime.render import DEFAULT_SYSTEM_PROMPT
from deltamem_agents.runtime.session import Conversation, SessionRunner
from deltamem_agents.runtime.window import WindowPolicy

TOPICS = ["the sea", "a red bicycle", "my grandmother's garden", "a robot chef", "winter in Oslo",
          "a lost cat", "the first moon landing", "a jazz trio", "a mountain hut", "an old lighthouse"]


def sessions(runner: SessionRunner, n: int) -> list[Conversation]:
    convs = []
    for i in range(n):
        conv = Conversation(f"s{i}", state=runner.engine.model.deltamem.zero_state(1),
                            system_prompt=DEFAULT_SYSTEM_PROMPT)
        runner.add(conv, [{"role": "user", "content": f"My name is user {i}. " + "I like tea. " * (i % 4)},
                          {"role": "assistant", "content": f"Nice to meet you, user {i}!"}])
        convs.append(conv)
    return convs


def ask(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]


def serial(runner, convs, cfg):
    out = []
    for i, c in enumerate(convs):
        res = Generation()
        for _ in runner.respond(c, ask(i), cfg, None, res):
            pass
        out.append(res)
    return out


def batched(runner, dec, convs, cfg):
    turns = [Turn(c, ask(i), cfg) for i, c in enumerate(convs)]
    respond_batch(runner, dec, turns)
    for t in turns:
        if t.error is not None:
            raise t.error
    return [t.result for t in turns]


def threaded(runner, dec, convs, cfg):
    batcher = TurnBatcher(runner, decoder=dec, max_batch=len(convs), wait_ms=20.0)
    out: list[Generation | None] = [None] * len(convs)
    go = threading.Barrier(len(convs))

    def one(i):
        go.wait()
        out[i] = batcher.generate(convs[i], ask(i), cfg)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(convs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    batcher.close()
    return out, batcher.batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(None, "default")
    runner = SessionRunner(Engine(model, tok), WindowPolicy())
    dec = BatchedDecoder(model, tok, engine=runner.engine)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    arms = {"serial": lambda c: (serial(runner, c, cfg), None),
            "batched": lambda c: (batched(runner, dec, c, cfg), None),
            "batcher": lambda c: threaded(runner, dec, c, cfg)}
    times = {k: 0.0 for k in arms}
    cpu = {k: 0.0 for k in arms}
    per_round: list[dict[str, float]] = []
    tokens = {k: 0 for k in arms}
    sizes = []
    batched(runner, dec, sessions(runner, 2), GenerationConfig(max_new_tokens=2))  # warm-up
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        ids = {}
        for name in order:
            convs = sessions(runner, args.sessions)
            t0, c0 = time.perf_counter(), time.process_time()
            res, info = arms[name](convs)
            times[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
            tokens[name] += sum(len(g.token_ids) for g in res)
            ids[name] = [g.token_ids for g in res]
            per_round.append({"round": r, "arm": name, "wall": time.perf_counter() - t0})
            print(f"round {r} {name}: {sum(len(g.token_ids) for g in res)} tokens, "
                  f"{per_round[-1]['wall']:.1f} s wall, {time.process_time() - c0:.1f} s CPU", flush=True)
            if info:
                sizes.extend(info)
        for name in arms:
            for i, (a, b) in enumerate(zip(ids["serial"], ids[name])):
                assert a == b, f"round {r} session {i}: {name} differs from serial\n{a}\n{b}"
    print(f"{args.sessions} sessions x {args.new_tokens} new tokens, {args.rounds} rounds, "
          f"{args.threads} threads, SmolLM2-135M-Instruct + shipped adapter (token ids equal across arms)")
    print("| arm | generated tokens | wall s | tokens/s (wall) | vs serial | CPU s | tokens/CPU-s | vs serial |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base, cbase = tokens["serial"] / times["serial"], tokens["serial"] / cpu["serial"]
    for name in arms:
        tps, cps = tokens[name] / times[name], tokens[name] / cpu[name]
        print(f"| {name} | {tokens[name]} | {times[name]:.1f} | {tps:.1f} | {tps / base:.2f}× | {cpu[name]:.1f} | "
              f"{cps:.1f} | {cps / cbase:.2f}× |")
    print("per round (wall s):", ", ".join(f"r{p['round']} {p['arm']} {p['wall']:.1f}" for p in per_round))
    print(f"TurnBatcher batch sizes: {sizes}")


if __name__ == "__main__":
    main()
