"""Open-set memory suites: names, numbers, places, dates, codes, titles, order ids and prices said once by the user
or returned once by a tool, asked much later (values from `datasets.openset`, probes from `datasets.handwritten`).

- openset-distance: one fact, `distance` tokens of chit-chat after it; held-out values and held-out wordings of the
  trained relation types (cells d500, d2000 by default).
- openset-newrel: the same with relation types never trained on (`heldout_types=True`).
- openset-hand: the 48 hand-written probes (person / work / tool, taken round-robin so a `limit` keeps the mix) at
  the same distances.
- openset-tool: only facts a tool returned (order ids, prices, tracking numbers; a third of a new relation type),
  1,000 tokens back.
- openset-multi: k facts of distinct relations (mixed kinds, user- and tool-stated) in one history, one asked,
  500 tokens of chit-chat after the last fact (cells k3 ... k8).

A user fact is the user's message followed by an acknowledgement; a tool fact is rendered the way the runtime logs a
tool result: the user's request, the assistant's tool call, the tool message holding the result, an acknowledgement.
Acknowledgements never repeat the value, and no chit-chat exchange contains it (checked with the score's own
normalised containment, `datasets.answers`), so the value is in the history exactly once. `Item.fact_turns` lists
the messages of every fact's turns, in order: what the `fact` ceiling backend keeps.

Held out by construction: the lab trains only on `split="train"` values (a hash of kind and value decides the split)
and the training wordings of the trained relation types; these suites use `split="heldout"` only, so no value or
wording here was trained on, whatever the seed. Each episode is seeded by a string naming the task, seed, cell and
index (no integer seed of the lab's), so items are deterministic, and the first n items of a cell are the same for
every `limit` >= n. The score is containment of the value in the reply, the same for every backend. Every item's
donor (the shuffled-memory control) is the next episode of the same cell.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from ...datasets.answers import contains_answer
from ...datasets.distractors import Ctx, distractor, faker_for
from ...datasets.episode import tokens_after
from ...datasets.handwritten import handwritten_facts
from ...datasets.openset import Fact, sample_fact
from ..items import Item

TASKS = ("openset-distance", "openset-newrel", "openset-hand", "openset-tool", "openset-multi")
MAX_NEW_TOKENS = 24  # long values (a hand-written tracking number, a three-word village) need more than 16
ACKS = ("Noted.", "Got it, thanks.", "Okay, I'll keep that in mind.", "Thanks for letting me know.")
TOOL_KINDS = ("order_id", "price")  # every tool-stated relation type (order, quote; tracking is a new type)
# the tool each generated tool relation stands for, and requests that never contain a value
TOOLS = {"order": ("lookup_order", ("Can you look up my latest order?", "Please check my order for me.",
                                    "What's the status of my last order? Look it up, please.")),
         "quote": ("check_price", ("Can you check the price of that item?", "How much is it? Please check the shop.",
                                   "Look up the price for me, please.")),
         "tracking": ("track_shipment", ("Where is my shipment? Please check.", "Can you track my parcel?",
                                         "Look up the shipment for me, please."))}
GENERIC_TOOL = ("lookup", ("Can you look that up for me?", "Please check that for me.", "Could you run that lookup?"))


def fact_turns(fact: Fact, r: random.Random) -> tuple[list[dict], int]:
    """(the fact's messages, offset of the one holding the value): a user statement and an acknowledgement, or a
    request, a tool call, the tool's result and an acknowledgement."""
    ack = {"role": "assistant", "content": r.choice(ACKS)}
    if fact.speaker != "tool":
        return [{"role": "user", "content": fact.statement}, ack], 0
    fn, requests = TOOLS.get(fact.relation, GENERIC_TOOL)
    call_id = f"call_{r.getrandbits(48):012x}"
    call = {"id": call_id, "type": "function", "function": {"name": fn, "arguments": json.dumps({})}}
    return [{"role": "user", "content": r.choice(requests)},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": fn, "tool_call_id": call_id, "content": fact.statement}, ack], 2


def _exchange(ctx: Ctx, values: list[str]) -> tuple[str, str]:
    for _ in range(200):
        u, a = distractor(ctx.r, ctx.fake, ctx.avoid, ctx.used)
        if not contains_answer(f"{u} {a}", values):
            return u, a
    raise RuntimeError(f"no chit-chat exchange free of {values}")


def _chat(ctx: Ctx, messages: list[dict], n: int, values: list[str]) -> None:
    for _ in range(n):
        u, a = _exchange(ctx, values)
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]


def episode(key: str, facts: list[Fact], asked: int, distance: int, count: Callable[[str], int]) -> dict:
    """One history: 0–2 exchanges, each fact's turns (0–2 exchanges between facts), then chit-chat until `distance`
    tokens follow the last fact's message. Seeded by `key` alone."""
    r = random.Random(key)
    values = [f.value for f in facts]
    ctx = Ctx(r, faker_for(r.getrandbits(32)), values)
    messages: list[dict] = []
    turns: list[int] = []
    stated: list[int] = []
    _chat(ctx, messages, r.randint(0, 2), values)
    for i, f in enumerate(facts):
        if i:
            _chat(ctx, messages, r.randint(0, 2), values)
        msgs, at = fact_turns(f, r)
        stated.append(len(messages) + at)
        turns += range(len(messages), len(messages) + len(msgs))
        messages += msgs
    tok = tokens_after(messages, stated[-1], count)
    while tok < distance:
        u, a = _exchange(ctx, values)
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        tok += count(u) + count(a)
    return {"messages": tuple(messages), "fact_index": stated[asked], "fact_turns": tuple(turns),
            "tokens_after": tokens_after(messages, stated[asked], count)}


def _facts(task: str, r: random.Random, k: int = 1) -> list[Fact]:
    if task == "openset-distance":
        return [sample_fact(r, "heldout")]
    if task == "openset-newrel":
        return [sample_fact(r, "heldout", heldout_types=True)]
    if task == "openset-tool":
        return [sample_fact(r, "heldout", heldout_types=r.random() < 1 / 3, kinds=TOOL_KINDS)]
    out: list[Fact] = []  # openset-multi: distinct relations, no value inside another fact's statement
    while len(out) < k:
        f = sample_fact(r, "heldout")
        if f.relation in {g.relation for g in out} or any(contains_answer(g.statement, [f.value]) or
                                                          contains_answer(f.statement, [g.value]) for g in out):
            continue
        out.append(f)
    return out


def hand_order() -> list[Fact]:
    """The hand-written probes round-robin over their groups (person, work, tool, person, ...)."""
    facts = handwritten_facts()
    groups = [[f for f in facts if f.kind == g] for g in dict.fromkeys(f.kind for f in facts)]
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def openset_items(task: str, cells: list[int], n: int, seed: int, count: Callable[[str], int],
                  multi_distance: int = 500) -> list[Item]:
    """`n` items per cell; cells are distances, or numbers of facts for openset-multi (then `multi_distance` tokens
    follow the last fact); openset-hand has at most 48 items per cell."""
    if task not in TASKS:
        raise ValueError(f"unknown open-set task {task!r}; choose from {', '.join(TASKS)}")
    hand = hand_order() if task == "openset-hand" else []
    if hand:
        n = min(n, len(hand))
    items = []
    for c in cells:
        k, d = (c, multi_distance) if task == "openset-multi" else (1, c)
        cell = f"k{k}" if task == "openset-multi" else f"d{d}"
        eps = []
        for i in range(n + 1):
            key = f"openset:{task}:{seed}:{cell}:{i}"
            r = random.Random(key + ":facts")
            facts = [hand[i % len(hand)]] if hand else _facts(task, r, k)
            asked = r.randrange(len(facts))
            eps.append((facts, asked, episode(key, facts, asked, d, count)))
        for i in range(n):
            facts, asked, ep = eps[i]
            f = facts[asked]
            rtype = "hand" if hand else "new" if task == "openset-newrel" or f.relation == "tracking" else "trained"
            items.append(Item(
                task=task, item_id=f"{cell}/{i}", messages=ep["messages"], question=f.question, gold=f.value,
                aliases=(f.value,), evidence=(ep["fact_index"],), fact_turns=ep["fact_turns"],
                max_new_tokens=MAX_NEW_TOKENS, donor=eps[i + 1][2]["messages"], donor_id=f"{cell}/{i + 1}",
                fields={"cell": cell, "distance": d, "n_facts": k, "relation": f.relation, "value_kind": f.kind,
                        "speaker": f.speaker, "relation_type": rtype, "tokens_after": ep["tokens_after"]}))
    return items
