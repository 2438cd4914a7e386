"""Open-set facts: values outside any closed list (names, numbers, places, dates, codes, titles, tool values).

Each *kind* has a value generator (Faker for names and places, seeded; our own formats for numbers, codes, dates,
titles, order ids and prices). Every value belongs to exactly one split, decided by a hash of the kind and the
value's text, so an evaluation value is never a training value (`split_of`). Each *relation* ("my sister is
called {v}") belongs to one kind, has statement wordings and questions, and is either a training relation or a
held-out relation type; inside a training relation the last wording is kept for evaluation (`template_split`).

    fact = sample_fact(random.Random(0), split="heldout")          # value, relation and wording all held out
    fact.statement   # 'The offsite moved to the Stonebridge office.'   (the value sits verbatim inside)
    fact.question    # 'Where is the offsite now?'
    fact.value       # 'Stonebridge'
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["KINDS", "RELATIONS", "Fact", "Relation", "draw_value", "relations", "sample_fact", "split_of"]

SPLITS = ("train", "heldout")
HELDOUT_SHARE = 5  # one value in five (by hash) is held out

_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL", "pl_PL", "sv_SE", "pt_PT")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_CODE_WORDS = ("maple", "falcon", "river", "copper", "cedar", "harbor", "pepper", "orbit", "willow", "ember",
               "summit", "lantern", "marble", "thistle", "quartz", "saffron", "juniper", "tundra", "beacon",
               "velvet", "cobalt", "meadow", "granite", "hazel", "lotus", "nimbus", "opal", "prairie", "raven",
               "sierra", "timber", "violet", "walnut", "zephyr", "aspen", "bramble", "canyon", "delta", "fjord",
               "glacier", "indigo", "jasper", "kestrel", "lagoon", "mosaic", "nutmeg", "onyx", "pebble")
_TITLE_WORDS = ("Silent", "Harbor", "Northern", "Lights", "Paper", "Garden", "Broken", "Compass", "Winter",
                "Orchard", "Hidden", "River", "Glass", "Mountain", "Second", "Chance", "Quiet", "Engine", "Little",
                "Kingdom", "Last", "Signal", "Copper", "Moon", "Bright", "Horizon", "Open", "Road", "Velvet",
                "Storm", "Distant", "Shore", "Iron", "Bridge", "Golden", "Hour", "Wild", "Atlas", "Crimson",
                "Tide", "Falling", "Stars", "Morning", "Project", "Blue", "Circuit", "Lost", "City", "Early",
                "Birds", "Hollow", "Crown", "Summer", "Archive", "Empty", "Rooms", "Deep", "Current", "Small",
                "Wonders", "Marble", "Sky")


@lru_cache(maxsize=None)
def _faker_lists() -> dict[str, tuple[str, ...]]:
    """First names, surnames and cities from several Faker locales (providers' own word lists, deduplicated)."""
    from faker import Faker

    out: dict[str, set[str]] = {"first_name": set(), "surname": set(), "city": set()}
    for loc in _LOCALES:
        f = Faker(loc)
        f.seed_instance(1234)
        for prov in f.providers:  # some locales build their city list from a set: fix its order across processes
            if isinstance(getattr(prov, "cities", None), list):
                prov.cities = sorted(prov.cities)
        for _ in range(600):
            out["first_name"].add(f.first_name())
            out["surname"].add(f.last_name())
            out["city"].add(f.city())
    keep = {k: tuple(sorted(v for v in vals if v.replace("-", " ").replace(" ", "").isalpha() and 3 <= len(v) <= 18))
            for k, vals in out.items()}
    return keep


def _gen(kind: str, rng: random.Random) -> str:
    if kind in ("first_name", "surname", "city"):
        return rng.choice(_faker_lists()[kind])
    if kind == "number":
        digits = rng.randint(3, 6)
        return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    if kind == "code":
        return f"{rng.choice(_CODE_WORDS)}{rng.randint(10, 99)}"
    if kind == "date":
        return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}"
    if kind == "title":
        return " ".join(rng.sample(_TITLE_WORDS, rng.randint(2, 4)))
    if kind == "order_id":
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
        return f"{letters}{rng.randint(1000, 99999)}"
    if kind == "price":
        return f"${rng.randint(3, 480)}.{rng.randint(0, 99):02d}"
    raise KeyError(kind)


KINDS = ("first_name", "surname", "city", "number", "code", "date", "title", "order_id", "price")


def split_of(kind: str, value: str) -> str:
    """The split a value belongs to: a stable hash of (kind, value), one in HELDOUT_SHARE held out."""
    h = int(hashlib.sha1(f"{kind}\x00{value.lower()}".encode()).hexdigest()[:8], 16)
    return "heldout" if h % HELDOUT_SHARE == 0 else "train"


def draw_value(kind: str, rng: random.Random, split: str) -> str:
    """A value of `kind` from `split` (rejection-sampled from the kind's generator)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for _ in range(10_000):
        v = _gen(kind, rng)
        if split_of(kind, v) == split:
            return v
    raise RuntimeError(f"no {split} value of kind {kind!r} found")


@dataclass(frozen=True)
class Relation:
    name: str
    kind: str
    statements: tuple[str, ...]  # wordings with a {v} slot; the last one is kept for evaluation
    questions: tuple[str, ...]
    heldout: bool = False  # a relation type never trained on
    speaker: str = "user"  # "tool": the statement is a tool's result


def _r(name: str, kind: str, statements: list[str], questions: list[str], **kw) -> Relation:
    return Relation(name, kind, tuple(statements), tuple(questions), **kw)


RELATIONS: tuple[Relation, ...] = (
    _r("sister", "first_name", ["My sister is called {v}.", "My little sister's name is {v}.",
                                "I have a sister, her name is {v}.", "You should meet my sister {v} sometime."],
       ["What is my sister called?", "What's my sister's name?"]),
    _r("colleague", "first_name", ["A new colleague joined my team today, her name is {v}.",
                                   "My new teammate is called {v}.", "The new hire on my team is {v}.",
                                   "I started pairing with a new colleague named {v}."],
       ["What is my new colleague's name?", "Who joined my team?"]),
    _r("landlord", "surname", ["My landlord is called Mr. {v}.", "The flat belongs to a Mr. {v}.",
                               "I rent from a man named Mr. {v}.", "Our landlord, Mr. {v}, finally fixed the heater."],
       ["What is my landlord's name?", "Who is my landlord?"]),
    _r("doctor", "surname", ["My new doctor is Dr. {v}.", "I was assigned to Dr. {v} at the clinic.",
                             "From now on I see Dr. {v} for check-ups.", "The clinic put me with a Dr. {v}."],
       ["What is my doctor's name?", "Which doctor do I see?"]),
    _r("hometown", "city", ["I grew up in {v}.", "I was born and raised in {v}.", "My hometown is {v}.",
                            "I spent my whole childhood in {v}."],
       ["Where did I grow up?", "What is my hometown?"]),
    _r("conference", "city", ["The conference this year is in {v}.", "This year's conference takes place in {v}.",
                              "They announced {v} as the conference city.", "We are flying to {v} for the conference."],
       ["Where is the conference?", "Which city is the conference in?"]),
    _r("locker", "number", ["My locker code is {v}.", "The code for my locker is {v}.",
                            "I set my locker combination to {v}.", "Remember, the locker opens with {v}."],
       ["What is my locker code?", "What's the combination of my locker?"]),
    _r("room", "number", ["My hotel room number is {v}.", "They gave me room {v} at the hotel.",
                          "I'm staying in room {v}.", "The front desk put me in room {v}."],
       ["What is my hotel room number?", "Which room am I in?"]),
    _r("wifi", "code", ["The wifi password here is {v}.", "The password for the wifi is {v}.",
                        "Use {v} to log into the wifi.", "Our guest wifi key is {v}."],
       ["What is the wifi password?", "What's the password for the wifi?"]),
    _r("birthday", "date", ["My birthday is on {v}.", "I was born on {v}.", "I celebrate my birthday on {v}.",
                            "Every year on {v} I turn a year older."],
       ["When is my birthday?", "What date is my birthday?"]),
    _r("book", "title", ["I'm reading a novel called {v}.", "The book on my nightstand is {v}.",
                         "I just started a book titled {v}.", "Right now I'm halfway through {v}."],
       ["What book am I reading?", "What's the title of the book I'm reading?"]),
    _r("order", "order_id", ["Order lookup result: order id {v}, status shipped.",
                             "Found 1 order. id={v} status=processing",
                             "The store's API returned order {v} for this customer.",
                             "Query complete: latest order is {v}."],
       ["What is my order id?", "What was the order number?"], speaker="tool"),
    _r("quote", "price", ["Price check: the item costs {v} including tax.", "Quote received, total {v}.",
                          "The shop's API lists the price as {v}.", "Result: price={v} currency=USD"],
       ["How much does the item cost?", "What was the price?"], speaker="tool"),
    # held-out relation types: never trained on
    _r("dentist", "surname", ["My dentist is Dr. {v}.", "I get my teeth checked by Dr. {v}."],
       ["What is my dentist's name?"], heldout=True),
    _r("offsite", "city", ["The team offsite moved to {v}.", "Our offsite will be held in {v} now."],
       ["Where is the team offsite?"], heldout=True),
    _r("pin", "number", ["My bike lock PIN is {v}.", "The PIN on my bike lock is {v}."],
       ["What is my bike lock PIN?"], heldout=True),
    _r("nephew", "first_name", ["My nephew is called {v}.", "My brother's son is named {v}."],
       ["What is my nephew's name?"], heldout=True),
    _r("tracking", "order_id", ["Shipment lookup: tracking number {v}, in transit.",
                                "Carrier API returned tracking id {v}."],
       ["What is the tracking number?"], heldout=True, speaker="tool"),
)


def relations(heldout_types: bool = False, kinds: tuple[str, ...] | None = None) -> list[Relation]:
    return [r for r in RELATIONS if r.heldout == heldout_types and (kinds is None or r.kind in kinds)]


def template_split(rel: Relation, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(statements, questions) a split may use: training relations keep their last wording and question for
    evaluation; held-out relation types are evaluation-only."""
    if rel.heldout:
        return rel.statements, rel.questions
    if split == "train":
        return rel.statements[:-1], rel.questions[:1]
    return rel.statements[-1:], rel.questions[-1:]


@dataclass(frozen=True)
class Fact:
    relation: str
    kind: str
    value: str
    statement: str
    question: str
    speaker: str


def sample_fact(rng: random.Random, split: str, *, heldout_types: bool = False,
                kinds: tuple[str, ...] | None = None) -> Fact:
    """One fact: a relation (training or held-out types), a wording of the split, a value of the split."""
    rel = rng.choice(relations(heldout_types, kinds))
    statements, questions = template_split(rel, split)
    value = draw_value(rel.kind, rng, split)
    return Fact(rel.name, rel.kind, value, rng.choice(statements).format(v=value), rng.choice(questions),
                rel.speaker)
