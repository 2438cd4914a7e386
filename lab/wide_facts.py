"""A wide bank of training facts for the copy channel: many relations, wordings, questions and tool-output formats.

The product's generator (`deltamem_agents.datasets.openset`) has 13 training relations, three training wordings and
one training question each: a read trained on it recalls generated held-out facts but few hand-written ones, whose
phrasing and topics are nothing like those templates. This bank is for training only. It is disjoint from every
evaluation set: none of its topics is a held-out relation type of the generator (dentist, offsite, PIN, nephew,
tracking number) or a topic of the hand-written probes (`datasets/data/handwritten_probes.jsonl`: a vet, a gym
locker, a baby's name, a passport, a roof, a cat, a storage unit, a flight gate, an invoice, a wifi password...),
and values come from the generator's training pools (`draw_value(kind, rng, "train")`), so no held-out value is
ever seen. `tests/lab/test_wide_facts.py` checks the disjointness against the probes and the generator.

A fact is a relation (a topic of one value kind with a few statement wordings and questions) rendered in one of
several chat styles (plain, chatty lowercase, a note, a topic-first aside) or, for tool relations, one of several
output formats (JSON with other fields beside the value, key=value, a call and its result, a table row).
"""
from __future__ import annotations

import json
import random

from deltamem_agents.datasets.openset import Fact, draw_value

# (name, kind, statements with {v}, questions). Statements are the plain core; styles wrap them.
USER_RELATIONS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("cousin", "first_name", ("my cousin is called {v}", "I have a cousin named {v}", "my cousin {v} is visiting in May"),
     ("What is my cousin's name?", "Who is my cousin?", "Remind me, what's my cousin called?")),
    ("manager", "first_name", ("my manager is {v}", "I report to {v} now", "{v} is my new manager"),
     ("Who is my manager?", "Who do I report to?", "What's my manager's name?")),
    ("babysitter", "first_name", ("the babysitter on Fridays is {v}", "we hired a babysitter, her name is {v}",
                                  "{v} babysits for us on weekends"),
     ("Who is our babysitter?", "What's the babysitter's name?")),
    ("trainer", "first_name", ("my personal trainer is called {v}", "I train with a coach named {v}",
                               "{v} is the coach who runs my sessions"),
     ("Who is my personal trainer?", "What is my coach called?")),
    ("roommate", "first_name", ("my roommate is {v}", "I share the flat with {v}", "{v} moved in as my flatmate"),
     ("Who is my roommate?", "Who do I share the flat with?")),
    ("mentor", "first_name", ("my mentor at work is {v}", "{v} agreed to mentor me", "I meet my mentor {v} monthly"),
     ("Who is my mentor?", "Who agreed to mentor me?")),
    ("oncall", "first_name", ("{v} is on call this week", "this week's on-call engineer is {v}",
                              "if prod breaks, page {v}, they're on call"),
     ("Who is on call this week?", "Who should I page if prod breaks?")),
    ("designer", "first_name", ("the designer on our project is {v}", "{v} is doing the designs for us",
                                "we got {v} to design the screens"),
     ("Who is designing for our project?", "What's the designer's name?")),
    ("godson", "first_name", ("my godson is named {v}", "{v} is my godson, he turns ten soon"),
     ("What is my godson's name?", "Who is my godson?")),
    ("accountant", "surname", ("my accountant is Ms. {v}", "we do our taxes with an accountant called {v}",
                               "Ms. {v} handles my accounts"),
     ("Who is my accountant?", "What is my accountant's name?")),
    ("lawyer", "surname", ("our lawyer is Mr. {v}", "the firm assigned us a lawyer, a Mr. {v}",
                           "Mr. {v} is representing us"),
     ("Who is our lawyer?", "What's the lawyer's name?")),
    ("physio", "surname", ("my physiotherapist is Dr. {v}", "I see a physio called {v} for my knee"),
     ("Who is my physiotherapist?", "Which physio do I see for my knee?")),
    ("professor", "surname", ("my thesis supervisor is Professor {v}", "Professor {v} is supervising my thesis"),
     ("Who supervises my thesis?", "What's my supervisor's name?")),
    ("neighbours", "surname", ("the family next door are the {v}s", "our new neighbours are called {v}"),
     ("What are the new neighbours called?", "Who lives next door?")),
    ("inlaws", "city", ("my in-laws live in {v}", "my wife's parents are in {v}", "we visit the in-laws in {v}"),
     ("Where do my in-laws live?", "Which city are my in-laws in?")),
    ("wedding", "city", ("the wedding is going to be in {v}", "my sister is getting married in {v}",
                         "we booked the wedding venue in {v}"),
     ("Where is the wedding?", "Which city is the wedding in?")),
    ("relocation", "city", ("the company is relocating to {v}", "HQ moves to {v} next year",
                            "they're moving our headquarters to {v}"),
     ("Where is the company relocating?", "Where will the headquarters be?")),
    ("daughter_uni", "city", ("my daughter studies in {v}", "our daughter got into a university in {v}"),
     ("Where does my daughter study?", "Which city is my daughter's university in?")),
    ("layover", "city", ("the layover is in {v}", "we change planes in {v}", "there's a stopover in {v}"),
     ("Where is the layover?", "Where do we change planes?")),
    ("retreat", "city", ("the yoga retreat is in {v}", "I signed up for a retreat in {v}"),
     ("Where is the retreat?", "Which city is my retreat in?")),
    ("apartment", "number", ("my apartment number is {v}", "I live in apartment {v}", "the flat is number {v}"),
     ("What is my apartment number?", "Which apartment do I live in?")),
    ("employee", "number", ("my employee number is {v}", "HR gave me staff ID {v}", "my badge number is {v}"),
     ("What is my employee number?", "What's my staff ID?")),
    ("seat", "number", ("my seat on the train is {v}", "I'm in seat {v} on the train"),
     ("What's my seat number on the train?", "Which seat am I in?")),
    ("extension", "number", ("my desk phone extension is {v}", "you can reach me on extension {v}"),
     ("What is my phone extension?", "Which extension am I on?")),
    ("garage", "number", ("the garage door code is {v}", "to open the garage, type {v}"),
     ("What is the garage code?", "How do I open the garage?")),
    ("table", "number", ("we're at table {v} for the gala", "our table number at the gala is {v}"),
     ("Which table are we at for the gala?", "What's our table number?")),
    ("promo", "code", ("the promo code for the shop is {v}", "use the discount code {v} at checkout"),
     ("What is the promo code?", "Which discount code should I use?")),
    ("branch", "code", ("my feature branch is called {v}", "I pushed the fix to the branch {v}"),
     ("What's my feature branch called?", "Which branch has the fix?")),
    ("alarm", "code", ("the alarm code at the office is {v}", "to disarm the office alarm enter {v}"),
     ("What is the office alarm code?", "How do I disarm the office alarm?")),
    ("voucher", "code", ("the gift voucher code is {v}", "my voucher for the spa is {v}"),
     ("What is my voucher code?", "What's the code on the gift voucher?")),
    ("movein", "date", ("we move into the new place on {v}", "the move-in date is {v}", "our lease starts {v}"),
     ("When do we move in?", "What's the move-in date?")),
    ("deadline", "date", ("the grant deadline is {v}", "applications for the grant close on {v}"),
     ("When is the grant deadline?", "When do grant applications close?")),
    ("exam", "date", ("my driving test is on {v}", "I finally booked the driving exam for {v}"),
     ("When is my driving test?", "What date is the driving exam?")),
    ("launch", "date", ("we launch the app on {v}", "launch day is {v}", "the app goes live {v}"),
     ("When does the app launch?", "What's the launch date?")),
    ("mum_bday", "date", ("mum's birthday is {v}", "my mother was born on {v}"),
     ("When is my mum's birthday?", "What date is my mother's birthday?")),
    ("podcast", "title", ("the podcast I'm hooked on is {v}", "I keep listening to a podcast called {v}"),
     ("Which podcast am I hooked on?", "What's the podcast I keep listening to?")),
    ("film", "title", ("the film we saw on Saturday was {v}", "we watched {v} at the cinema"),
     ("Which film did we see?", "What did we watch at the cinema?")),
    ("album", "title", ("the album on repeat for me is {v}", "I've been playing the album {v} all week"),
     ("Which album have I been playing?", "What album is on repeat for me?")),
    ("boardgame", "title", ("our favourite board game lately is {v}", "we bought a board game called {v}"),
     ("What board game did we buy?", "Which board game do we play lately?")),
    ("talk", "title", ("my talk at the meetup is titled {v}", "I'm giving a talk called {v}"),
     ("What is my talk called?", "What's the title of my talk?")),
)

# Chat styles: how a person drops a fact into a conversation (the statement core lower-cased where it fits).
STYLES = ("{s}.", "By the way, {s}.", "fyi {s}", "Quick note: {s}.", "Oh, and {s}, just so you know.",
          "{S}. Can you remember that?", "Not sure if I told you, but {s}.", "ok so {s} lol", "Note to self: {s}.",
          "{S}, in case it comes up later.")
QUESTION_STYLES = ("{q}", "Remind me: {q}", "Quick question. {q}", "{q} I forgot.", "Do you remember? {q}",
                   "hey, {ql}", "Sorry, {ql}")

# Tool relations: (name, kind, field names, the question). The value sits among other fields.
TOOL_RELATIONS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("shipment", "order_id", ("shipment_id", "shipment", "id"), ("What is the shipment id?", "Which shipment was it?")),
    ("refund", "order_id", ("refund_ref", "refund_id"), ("What is the refund reference?", "What's the refund id?")),
    ("case", "order_id", ("case_number", "case"), ("What is the case number?", "Which case was opened?")),
    ("fare", "price", ("fare", "total_fare"), ("How much is the fare?", "What does the trip cost?")),
    ("rent_quote", "price", ("monthly_rent", "rent"), ("What is the monthly rent?", "How much is the rent?")),
    ("repair", "price", ("estimate", "repair_cost"), ("How much will the repair cost?", "What's the estimate?")),
    ("agent", "first_name", ("agent", "assigned_to"), ("Who is the assigned agent?", "Which agent has it?")),
    ("organizer", "first_name", ("organizer", "organizer_name"), ("Who is the organizer?", "Who organizes it?")),
    ("venue_city", "city", ("city", "venue_city", "location"), ("Which city is the venue in?", "Where is it held?")),
    ("due", "date", ("due_date", "due"), ("When is it due?", "What is the due date?")),
    ("room_no", "number", ("room", "room_number"), ("Which room was booked?", "What room number is it?")),
    ("coupon", "code", ("coupon", "coupon_code"), ("What is the coupon code?", "Which coupon came back?")),
)
_FILLER_FIELDS = {"status": ("ok", "pending", "done", "active"), "items": ("1", "2", "3", "5"),
                  "source": ("api", "cache", "db"), "retries": ("0", "1"), "region": ("eu-west", "us-east", "ap-south")}


def _tool_statement(rng: random.Random, field: str, value: str) -> str:
    fields = rng.sample(sorted(_FILLER_FIELDS), rng.randint(1, 3))
    pairs = [(f, rng.choice(_FILLER_FIELDS[f])) for f in fields]
    pairs.insert(rng.randint(0, len(pairs)), (field, value))
    fmt = rng.randrange(4)
    if fmt == 0:
        return json.dumps(dict(pairs), ensure_ascii=False)
    if fmt == 1:
        return " ".join(f"{k}={v}" for k, v in pairs)
    if fmt == 2:
        return f"lookup({field!r}) -> " + ", ".join(f"{k}: {v}" for k, v in pairs)
    return " | ".join(k for k, _ in pairs) + "\n" + " | ".join(v for _, v in pairs)


def wide_fact(rng: random.Random, p_tool: float = 0.25) -> Fact:
    """One training fact from the wide bank (values from the generator's training pools)."""
    if rng.random() < p_tool:
        name, kind, fields, questions = rng.choice(TOOL_RELATIONS)
        value = draw_value(kind, rng, "train")
        return Fact(name, kind, value, _tool_statement(rng, rng.choice(fields), value), rng.choice(questions), "tool")
    name, kind, statements, questions = rng.choice(USER_RELATIONS)
    value = draw_value(kind, rng, "train")
    core = rng.choice(statements).format(v=value)
    statement = rng.choice(STYLES).format(s=core, S=core[0].upper() + core[1:])
    q = rng.choice(questions)
    question = rng.choice(QUESTION_STYLES).format(q=q, ql=q[0].lower() + q[1:])
    return Fact(name, kind, value, statement, question, "user")


def mixed_histories(tok, seed: int, n: int, bank_size: int, lo: int, hi: int, p_wide: float = 0.5) -> list:
    """Training histories as `openset_copyhistory.train_histories` (same bank, same distances), a share `p_wide` of
    them holding a fact from this bank instead of the generator's."""
    from .openset_copyhistory import history, make_bank

    bank = make_bank(seed * 7_919 + 5, bank_size, tok)
    rng = random.Random(seed * 7_919 + 11)
    return [history(rng, "train", rng.randint(lo, hi), bank, fact=wide_fact(rng) if rng.random() < p_wide else None)
            for _ in range(n)]
