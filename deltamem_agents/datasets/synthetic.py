"""Seeded, download-free generators of chat episodes that ask about a fact stated earlier.

Kinds: ``fact`` (one personal fact, then distractor chit-chat, then the question), ``update``
(the fact is stated, later changed; the question asks the current value), ``tool`` (an assistant
tool call whose JSON result holds the value), ``multi`` (``n_facts`` facts of distinct relations,
one asked) and ``in_window`` (a ``fact`` episode with a short distance, as an in-context control).

``distance_tokens`` is the approximate size of the history *after* the fact message, measured with
``count_tokens`` (default :func:`~.episode.approx_tokens`, ~1.3 tokens per word); distractor
exchanges are appended until it is reached and until ``min_messages_after`` messages follow the
fact. Every episode records its own ``meta["seed"]``; Faker is re-seeded from the episode RNG, so
the same seed always gives the same episodes. Train and held-out splits use disjoint template ids,
held-out-only relations, and split-salted seeds (``generate``).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Callable

from .episode import Episode, answer_text, approx_tokens
from .distractors import Ctx, company, faker_for
from .pools import FACT_ACKS, MONTHS, POOLS, UPDATE_ACKS, article
from .templates import Relation, relation, relations, templates
from .tool_templates import tool_scenarios, tool_templates

__all__ = ["make_fact_episode", "make_multi_fact_episode", "make_in_window_episode", "generate", "DEFAULT_MIX"]

SPLITS = ("train", "heldout")
DEFAULT_MIX = {"fact": 0.35, "update": 0.2, "multi": 0.2, "tool": 0.15, "in_window": 0.1}
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _value(kind: str, rng: random.Random, fake) -> str:
    if kind == "first_name":
        return fake.first_name()
    if kind == "female_name":
        return fake.first_name_female()
    if kind == "male_name":
        return fake.first_name_male()
    if kind == "city":
        return fake.city() if rng.random() < 0.5 else rng.choice(POOLS["city"])
    if kind == "company":
        return company(rng, fake)
    if kind == "date":
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    if kind == "num3":
        return str(rng.randint(10, 999))
    if kind == "code4":
        return f"{rng.randint(1000, 9999)}"
    if kind == "code6":
        return f"{rng.randint(100000, 999999)}"
    if kind == "ext":
        return str(rng.randint(100, 9999))
    return rng.choice(POOLS[kind])


def _aliases(value: str) -> tuple[str, ...]:
    parts = value.split()
    if len(parts) == 2 and parts[0] in MONTHS and parts[1].isdigit():  # dates: also "14 March"
        return (value, f"{parts[1]} {parts[0]}")
    return (value,)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pick_relation(rng: random.Random, split: str, *, updatable=None, exclude=()) -> Relation:
    """Pick a family uniformly, then a relation of that family (so big families don't dominate)."""
    pool = [r for r in relations(split, updatable=updatable) if r.key not in exclude]
    families = sorted({r.family for r in pool})
    fam = rng.choice(families)
    return rng.choice([r for r in pool if r.family == fam])


def _extra_slots(rel: Relation, rng: random.Random) -> dict:
    return {"month": rng.choice(MONTHS)} if rel.family == "trip" else {}


def _render(rel: Relation, part: str, split: str, rng: random.Random, slots: dict) -> tuple[str, str]:
    tpl = rng.choice(templates(rel.family, part, split))
    return _cap(tpl.text.format(**rel.slots, **slots)), tpl.id


def _value_slots(value: str, old: str | None = None) -> dict:
    return {"v": value, "a": article(value), "old": old or "", "a_old": article(old or "")}


def _start(rng: random.Random, split: str):
    """Draw the episode seed from ``rng``; the episode RNG is salted with the split."""
    _check_split(split)
    seed = rng.getrandbits(63)
    r = random.Random(f"{split}:{seed}")
    return seed, r, faker_for(r.getrandbits(32))


def make_fact_episode(rng: random.Random, *, split: str = "train", distance_tokens: int = 200,
                      count_tokens: Callable[[str], int] | None = None, kind: str = "fact",
                      min_messages_after: int = 0) -> Episode:
    """One episode of kind ``fact``, ``update`` or ``tool`` (see module docstring)."""
    if kind == "tool":
        return _tool_episode(rng, split, distance_tokens, count_tokens or approx_tokens, min_messages_after)
    if kind not in ("fact", "update"):
        raise ValueError(f"kind must be 'fact', 'update' or 'tool', got {kind!r}")
    seed, r, fake = _start(rng, split)
    count = count_tokens or approx_tokens
    rel = _pick_relation(r, split, updatable=True if kind == "update" else None)
    extra = _extra_slots(rel, r)
    value = _value(rel.value_kind, r, fake)
    old = None
    if kind == "update":
        old, value = value, _value(rel.value_kind, r, fake)
        while value == old:
            value = _value(rel.value_kind, r, fake)
    ctx = Ctx(r, fake, [value] + ([old] if old else []))
    messages: list[dict] = []
    ctx.chat(messages, r.randint(0, 2))
    meta = {"split": split, "seed": seed, "relation": rel.key, "family": rel.family, "value": value,
            "n_facts": 1, "distance_tokens": distance_tokens}
    stmt, sid = _render(rel, "s", split, r, {**extra, **_value_slots(old or value)})
    first_index = len(messages)
    messages += [{"role": "user", "content": stmt},
                 {"role": "assistant", "content": r.choice(FACT_ACKS).format(v=old or value)}]
    ids = {"statement": sid}
    fact_index = first_index
    if kind == "update":
        ctx.chat(messages, r.randint(0, 3))
        upd, uid = _render(rel, "u", split, r, {**extra, **_value_slots(value, old)})
        fact_index = len(messages)
        messages += [{"role": "user", "content": upd},
                     {"role": "assistant", "content": r.choice(UPDATE_ACKS).format(v=value)}]
        ids["update"] = uid
        meta.update(old_value=old, old_fact_index=first_index)
    meta["tokens_after"] = ctx.fill(messages, fact_index, distance_tokens, min_messages_after, count)
    question, ids["question"] = _render(rel, "q", split, r, extra)
    meta.update(templates=ids, template_ids=sorted(ids.values()))
    return Episode(tuple(messages), question, answer_text(value), _aliases(value), fact_index, kind, meta)


def _tool_episode(rng, split, distance_tokens, count, min_after) -> Episode:
    seed, r, fake = _start(rng, split)
    sc = r.choice(tool_scenarios(split))
    data = sc.build(r, fake)
    value, slots = data["value"], data["slots"]
    rid, req = r.choice(tool_templates(sc, "r", split))
    ctx = Ctx(r, fake, [value])
    messages: list[dict] = []
    ctx.chat(messages, r.randint(0, 2))
    call_id = f"call_{r.getrandbits(48):012x}"
    call = {"id": call_id, "type": "function",
            "function": {"name": sc.function, "arguments": json.dumps(data["args"])}}
    messages += [{"role": "user", "content": _cap(req.format(**slots))},
                 {"role": "assistant", "content": "", "tool_calls": [call]}]
    fact_index = len(messages)
    messages += [{"role": "tool", "name": sc.function, "tool_call_id": call_id, "content": json.dumps(data["result"])},
                 {"role": "assistant", "content": sc.summary.format(v=value, **slots)}]
    tok = ctx.fill(messages, fact_index, distance_tokens, min_after, count)
    qid, qtext = r.choice(tool_templates(sc, "q", split))
    meta = {"split": split, "seed": seed, "relation": f"tool_{sc.key}", "family": "tool", "value": value,
            "function": sc.function, "n_facts": 1, "distance_tokens": distance_tokens, "tokens_after": tok,
            "templates": {"request": rid, "question": qid}, "template_ids": sorted([rid, qid])}
    return Episode(tuple(messages), _cap(qtext.format(**slots)), answer_text(value), _aliases(value),
                   fact_index, "tool", meta)


def make_multi_fact_episode(rng: random.Random, *, split: str = "train", n_facts: int = 4, distance_tokens: int = 200,
                            count_tokens: Callable[[str], int] | None = None, min_messages_after: int = 0) -> Episode:
    """``n_facts`` facts of distinct relations (with a little chit-chat between), one of them asked."""
    if n_facts < 1:
        raise ValueError("n_facts must be >= 1")
    seed, r, fake = _start(rng, split)
    count = count_tokens or approx_tokens
    rels: list[Relation] = []
    values: list[str] = []
    while len(rels) < n_facts:
        rel = _pick_relation(r, split, exclude=[x.key for x in rels])
        value = _value(rel.value_kind, r, fake)
        if value.lower() in (v.lower() for v in values):
            continue
        rels.append(rel)
        values.append(value)
    asked = r.randrange(n_facts)
    ctx = Ctx(r, fake, values)
    messages: list[dict] = []
    ctx.chat(messages, r.randint(0, 2))
    fact_indices, ids, extras = [], [], []
    for i, (rel, value) in enumerate(zip(rels, values)):
        if i:
            ctx.chat(messages, r.randint(0, 2))
        extras.append(_extra_slots(rel, r))
        stmt, sid = _render(rel, "s", split, r, {**extras[-1], **_value_slots(value)})
        fact_indices.append(len(messages))
        ids.append(sid)
        messages += [{"role": "user", "content": stmt},
                     {"role": "assistant", "content": r.choice(FACT_ACKS).format(v=value)}]
    fact_index = fact_indices[asked]
    tok = ctx.fill(messages, fact_index, distance_tokens, min_messages_after, count)
    question, qid = _render(rels[asked], "q", split, r, extras[asked])
    value = values[asked]
    meta = {"split": split, "seed": seed, "relation": rels[asked].key, "family": rels[asked].family, "value": value,
            "n_facts": n_facts, "relations": [x.key for x in rels], "values": values, "fact_indices": fact_indices,
            "asked": asked, "distance_tokens": distance_tokens, "tokens_after": tok,
            "templates": {"statements": ids, "question": qid}, "template_ids": sorted(set(ids + [qid]))}
    return Episode(tuple(messages), question, answer_text(value), _aliases(value), fact_index, "multi", meta)


def make_in_window_episode(rng: random.Random, *, split: str = "train", max_distance_tokens: int = 40,
                           count_tokens: Callable[[str], int] | None = None, kind: str = "fact") -> Episode:
    """A ``fact``/``update``/``tool`` episode whose fact stays close to the question (kind ``in_window``)."""
    distance = rng.randint(0, max_distance_tokens)
    ep = make_fact_episode(rng, split=split, distance_tokens=distance, count_tokens=count_tokens, kind=kind)
    return replace(ep, kind="in_window", meta={**ep.meta, "base_kind": kind, "in_window": True})


def asked_value_kind(ep: Episode) -> str | None:
    """The value kind (colour, food, name, ...) of the episode's asked fact; None for tool results and bAbI."""
    key = ep.meta.get("relation", "")
    return None if not key or key.startswith("tool_") else relation(key).value_kind


def first_of_kinds(seed: int, split: str, value_kinds, **kw) -> Episode:
    """The first episode of the seeded sequence seed, seed + 7919, ... (`generate` kwargs) whose asked value is of
    `value_kinds` — a deterministic selection (the trainer's curriculum and the bench's --value-kinds)."""
    for attempt in range(200):
        ep = generate(1, seed=seed + attempt * 7919, split=split, **kw)[0]
        if asked_value_kind(ep) in value_kinds:
            return ep
    raise ValueError(f"no episode with value kinds {sorted(value_kinds)} for {kw}")


def generate(n: int, *, seed: int, split: str, mix: dict[str, float] | None = None, distance_range=(0, 800),
             count_tokens: Callable[[str], int] | None = None, n_facts_range=(2, 6),
             min_messages_after: int = 0) -> list[Episode]:
    """``n`` deterministic episodes; ``mix`` weights kinds (fact, update, tool, multi, in_window).

    The RNG is salted with the split, so train and held-out never share episode seeds.
    """
    _check_split(split)
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - {"fact", "update", "tool", "multi", "in_window"}
    if unknown or not any(w > 0 for w in mix.values()):
        raise ValueError(f"bad mix {mix!r}")
    kinds = sorted(k for k, w in mix.items() if w > 0)
    weights = [mix[k] for k in kinds]
    rng = random.Random(f"deltamem-synthetic:{split}:{seed}")
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        dist = rng.randint(*distance_range)
        if kind == "multi":
            ep = make_multi_fact_episode(rng, split=split, n_facts=rng.randint(*n_facts_range), distance_tokens=dist,
                                         count_tokens=count_tokens, min_messages_after=min_messages_after)
        elif kind == "in_window":
            ep = make_in_window_episode(rng, split=split, count_tokens=count_tokens)
        else:
            ep = make_fact_episode(rng, split=split, distance_tokens=dist, count_tokens=count_tokens, kind=kind,
                                   min_messages_after=min_messages_after)
        out.append(ep)
    return out
