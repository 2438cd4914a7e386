"""Variable tracking in a conversation (a synthetic benchmark suite).

A user gives a locker a code, later says that other lockers use "the same code as" an earlier one (a chain of
`hops` references), gives a distractor locker a different code, chats, and finally asks for the last locker's
code. Answering needs the first value *and* the chain: the code is stated once, the asked locker is never
stated with it. Codes are 4-digit numbers (an open-set value kind the shipped adapter was not trained on).
Seeded: the same seed gives the same episode.
"""

from __future__ import annotations

import random
from typing import Callable

from .distractors import Ctx, faker_for
from .episode import Episode, answer_text

STATE = ("Please remember this: the code for locker {a} is {v}.", "The code for locker {a} is {v}, by the way.")
CHAIN = ("Locker {b} uses the same code as locker {a}.", "I set locker {b} to the same code as locker {a}.")
ACKS = ("Noted.", "Got it.", "Okay, I'll keep that in mind.")
ASK = "What is the code for locker {z}?"


def vartrack_episode(seed: int, hops: int, distance: int, count: Callable[[str], int]) -> Episode:
    """One episode: the code, `hops` chain links (each after a little chit-chat), a distractor locker, then
    `distance` tokens of chit-chat after the last link and the question about the chain's last locker."""
    if hops < 0:
        raise ValueError("hops must be >= 0")
    r = random.Random(f"vartrack:{seed}:{hops}")
    names = r.sample([chr(c) for c in range(ord("A"), ord("Z") + 1)], hops + 2)
    chain, other = names[:hops + 1], names[-1]
    code, decoy = r.sample(range(1000, 10000), 2)
    ctx = Ctx(r, faker_for(r.getrandbits(32)), [str(code), str(decoy)])
    msgs: list[dict] = []
    ctx.chat(msgs, r.randint(0, 2))
    first = len(msgs)
    msgs += [{"role": "user", "content": r.choice(STATE).format(a=chain[0], v=code)},
             {"role": "assistant", "content": r.choice(ACKS)}]
    decoy_at = r.randint(0, hops)  # the distractor locker comes before link `decoy_at`
    last = first
    for h in range(hops + 1):
        if h == decoy_at:
            ctx.chat(msgs, r.randint(0, 1))
            msgs += [{"role": "user", "content": r.choice(STATE).format(a=other, v=decoy)},
                     {"role": "assistant", "content": r.choice(ACKS)}]
        if h < hops:
            ctx.chat(msgs, r.randint(1, 2))
            last = len(msgs)
            msgs += [{"role": "user", "content": r.choice(CHAIN).format(b=chain[h + 1], a=chain[h])},
                     {"role": "assistant", "content": r.choice(ACKS)}]
    tokens_after = ctx.fill(msgs, last, distance, 2, count)
    return Episode(tuple(msgs), ASK.format(z=chain[-1]), answer_text(str(code)), (str(code),), first, "vartrack",
                   {"seed": seed, "hops": hops, "chain": chain, "value": str(code), "decoy": str(decoy),
                    "decoy_locker": other, "last_link_index": last, "tokens_after": tokens_after,
                    "distance_tokens": distance})
