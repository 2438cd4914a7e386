"""Distractor (chit-chat) exchanges and per-episode generation state.

Distractors are drawn from :data:`~.pools.DISTRACTORS` (slots filled from a seeded Faker, so other
people, places and companies appear in the history) plus generated arithmetic/unit exchanges.
An exchange never mentions a value the episode asks about, and templates repeat within an episode
only once the pool is exhausted.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .episode import tokens_after
from .pools import DISTRACTORS, POOLS, WEEKDAYS, dynamic_distractor

__all__ = ["Ctx", "company", "distractor", "faker_for", "mentions"]

_COMPANY_SUFFIXES = ("Labs", "Group", "Systems", "Logistics", "Studio", "Partners", "Foods", "Media", "Robotics")
_FAKER = None


def faker_for(seed: int):
    """A shared en_US Faker instance, re-seeded for each episode (Faker is imported lazily)."""
    global _FAKER
    if _FAKER is None:
        from faker import Faker

        _FAKER = Faker("en_US")
    _FAKER.seed_instance(seed)
    return _FAKER


def company(rng: random.Random, fake) -> str:
    """A short Faker company name (falls back to "<Surname> <Suffix>" for long or comma names)."""
    name = fake.company()
    if "," in name or len(name.split()) > 3:
        name = f"{fake.last_name()} {rng.choice(_COMPANY_SUFFIXES)}"
    return name


def mentions(values) -> re.Pattern | None:
    """Case-insensitive whole-word pattern matching any of ``values`` (None when empty)."""
    values = sorted({v for v in values if v}, key=len, reverse=True)
    if not values:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(v) for v in values) + r")(?!\w)", re.IGNORECASE)


def distractor(rng: random.Random, fake, avoid, used: set | None = None) -> tuple[str, str]:
    """One user/assistant chit-chat exchange mentioning none of the ``avoid`` values.

    ``used`` (per episode) holds the distractor templates already drawn, so they repeat only once
    the pool is exhausted.
    """
    pattern = mentions(avoid)
    used = set() if used is None else used
    for _ in range(30):
        if rng.random() < 0.15:
            user, asst = dynamic_distractor(rng)
            if pattern is None or not pattern.search(f"{user} {asst}"):
                return user, asst
            continue
        if len(used) >= len(DISTRACTORS):
            used.clear()
        j = rng.choice([i for i in range(len(DISTRACTORS)) if i not in used])
        used.add(j)
        user, asst = DISTRACTORS[j]
        both = user + asst
        slots = {
            "name": fake.first_name() if "{name}" in both else "",
            "name2": fake.first_name() if "{name2}" in both else "",
            "city": (fake.city() if rng.random() < 0.5 else rng.choice(POOLS["city"] + POOLS["destination"]))
            if "{city}" in both else "",
            "company": company(rng, fake) if "{company}" in both else "",
            "num": str(rng.randint(2, 99)),
            "weekday": rng.choice(WEEKDAYS),
            "food": rng.choice(POOLS["food"]),
        }
        user, asst = user.format(**slots), asst.format(**slots)
        if pattern is None or not pattern.search(f"{user} {asst}"):
            return user, asst
    return "Thanks for the chat so far.", "You're welcome!"


@dataclass
class Ctx:
    """Per-episode state: RNG, seeded Faker, values distractors must avoid, used distractors."""

    r: random.Random
    fake: object
    avoid: list = field(default_factory=list)
    used: set = field(default_factory=set)

    def chat(self, messages: list, n: int) -> None:
        for _ in range(n):
            u, a = distractor(self.r, self.fake, self.avoid, self.used)
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]

    def fill(self, messages: list, fact_index: int, distance_tokens: int, min_after: int, count) -> int:
        """Append distractor exchanges until the distance (tokens and messages after the fact) is reached."""
        tok = tokens_after(messages, fact_index, count)
        while tok < distance_tokens or len(messages) - fact_index - 1 < min_after:
            u, a = distractor(self.r, self.fake, self.avoid, self.used)
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            tok += count(u) + count(a)
        return tok
