"""Generated *training* paraphrases: a small grammar per family expanded into many sentence templates.

Why: an adapter trained on three update sentences answers the newer value for those three and the older
one for any other wording. Hand-writing tens of wordings per family does not scale,
so each grammar here combines an opener, a core clause and (for updates) a closer into every wording, then
keeps a seeded sample. Slots are those of :mod:`.templates` (``{v}``, ``{old}``, ``{thing}``, ...).

Every generated template is a **train** template. The held-out lists in :mod:`.templates` stay as they
were, and the grammar avoids their vocabulary (``BANNED``), so the held-out probe still measures wordings
the adapter never saw (checked in tests/datasets/test_paraphrase.py).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

__all__ = ["GRAMMARS", "BANNED", "banned", "expand", "generated"]

# Words and phrases of each family's held-out templates (statements, updates, questions) that none of its
# generated training templates may use (a whole sentence is dropped if it contains one, opener included).
BANNED = {
    "favourite": ("number one", "top", "replaced", "lately", "scratch", "hands down", "like best", "pick", "above all",
                  "quiz", "will always be"),
    "name": ("goes by", "go by", "answers to", "for the record", "whenever", "i mean", "who is", "forgot", "recent",
             "taken over", "no longer", "again"),
    "home": ("call home", "home for me", "settled", "in which city", "which town", "remind me", "since last month",
             "relocated"),
    "hometown": ("kid", "roots", "back when", "young", "in what town", "remind me"),
    "employer": ("salary", "pays", "weekday", "office", "payroll", "firm", "starting this month", "hired", "no more"),
    "job": ("earn", "living", "business card", "for work", "kind of work", "no longer", "these days"),
    "car": ("ride", "parked", "get around", "traded", "these days", "what brand"),
    "date": ("every year", "the date of", "save", "remind me", "again"),
    "number": ("jot", "that's my", "in case i forget", "forgot", "which number", "tell me", "please", "as of today",
               "forget"),
    "appointment": ("i've got", "i'll be at", "the day of", "which day", "will i be", "remind me", "the date of", "again",
                    "pushed", "cancelled"),
    "trip": ("come {month}", "travelling", "getaway", "where will i be", "destination", "which place", "after all"),
    "preference": ("whenever", "choose", "find me", "picking", "pick", "sort of", "remind me", "every time", "lately",
                   "no more", "from now on"),
}

_OPEN_S = ("", "By the way, ", "Fun fact: ", "Oh, ", "Just so you know, ", "In case it comes up, ", "Random thing: ",
           "For what it's worth, ", "Honestly, ", "Okay, so ")
_CORE_S = ("my favourite {thing} is {v}.", "{v} is my favourite {thing}.", "I love {v} more than any other {thing}.",
           "the {thing} I love most is {v}.", "I'm a huge fan of {v}; it's my favourite {thing}.",
           "my all-time favourite {thing} is {v}.", "no {thing} makes me happier than {v}.",
           "if I had to choose one {thing}, it would be {v}.", "{v} is the {thing} I enjoy most.",
           "my favourite {thing}? {v}, easily.",
           # other words for "favourite" and other sentence shapes (the held-out wording stays banned): write gates
           # trained on fewer shapes generalise poorly to unseen update wordings
           "my go-to {thing} is {v}.", "{v} is my go-to {thing}.", "the {thing} I like most is {v}.",
           "I can't get enough of {v}; no other {thing} comes close.", "I'm crazy about {v}, the best {thing} there is.",
           "of every {thing}, {v} is the one I enjoy most.", "my best-loved {thing} is {v}.",
           "when it comes to {thing}, {v} wins for me.", "I adore {v}; it beats every other {thing}.")

_OPEN_U = ("", "Actually, ", "Update: ", "Heads up: ", "Quick correction: ", "Just so you know, ", "Oh, by the way, ",
           "Small change: ", "FYI, ", "News: ", "Correction: ", "So, ", "Well, ", "Okay, new info: ", "Funny thing, ",
           "Something changed: ")
_CORE_U_NEW = ("my favourite {thing} is {v} now", "my new favourite {thing} is {v}", "{v} is my new favourite {thing}",
               "{v} is my favourite {thing} now", "I've switched my favourite {thing} to {v}",
               "my favourite {thing} has changed to {v}", "these days the {thing} I love most is {v}",
               "I've fallen for {v}, so that's my favourite {thing} now", "I now love {v} more than any other {thing}",
               "from now on my favourite {thing} is {v}", "my favourite {thing} is now {v}",
               "I've changed my favourite {thing}: it's {v} now",
               # other words for "favourite" (see _CORE_S)
               "my go-to {thing} is {v} now", "{v} has become my go-to {thing}", "{v} is the {thing} I like most now",
               "the {thing} I enjoy most is {v} now", "{v} now beats every other {thing} for me",
               "{v} has overtaken the rest as the {thing} I like most", "my best-loved {thing} is now {v}",
               "when it comes to {thing}, {v} wins for me now", "I've got a new go-to {thing}: {v}",
               "I'm crazy about {v} now; it's the {thing} I enjoy most")
_CLOSE_U = (".", ", not {old}.", " instead of {old}.", " — no more {old}.", ". I'm done with {old}.",
            ". {old} was my old one.")
_CORE_U_OLD = ("my favourite {thing} is no longer {old}; it's {v}.", "I went off {old}; my favourite {thing} is {v} now.",
               "{v} beat {old} — it's my favourite {thing} now.",
               "{old} used to be my favourite {thing}, but now it's {v}.",
               "I don't love {old} anymore; {v} is my favourite {thing}.",
               "my favourite {thing} was {old}, and now it's {v}.", "I switched from {old} to {v} as my favourite {thing}.",
               "{old} is out, {v} is in: that's my favourite {thing} now.",
               "I've stopped loving {old}. My favourite {thing} is {v} now.",
               "my favourite {thing} went from {old} to {v}.",
               # other words for "favourite" (see _CORE_S)
               "{v} has taken {old}'s place as my go-to {thing}.", "{old} was my go-to {thing}, but {v} has overtaken it.",
               "I've gone off {old}; {v} is the {thing} I like most now.",
               "{v} has pushed {old} aside as the {thing} I enjoy most.",
               "my go-to {thing} used to be {old}; now it's {v}.", "{old} has lost out to {v} as my best-loved {thing}.")

_OPEN_Q = ("", "Quick question: ", "Hey, ", "Remind me, ", "So, ", "Tell me, ", "Let's see if you remember: ",
           "Hmm, ", "One more thing: ", "Okay, ")
_CORE_Q = ("what's my favourite {thing}?", "which {thing} do I love most?", "what is my favourite {thing} now?",
           "what's my current favourite {thing}?", "which {thing} is my favourite these days?",
           "what {thing} do I enjoy the most?", "do you know my favourite {thing}?",
           "what did I say my favourite {thing} is?", "which {thing} do I love most at the moment?",
           "what's the {thing} I love most?",
           # other words for "favourite" (see _CORE_S)
           "what's my go-to {thing}?", "which {thing} do I like most?", "what {thing} do I enjoy most these days?",
           "which {thing} wins for me?", "what's my best-loved {thing}?")

# the other families: openers and update closers are shared (BANNED filters per family), cores are the family's
_CLOSE = (".", ", not {old}.", " instead of {old}.", " — {old} is history.", ". {old} was the old one.")


def _fam(s_cores, u_new, u_old, q_cores):
    out = {"s": [(_OPEN_S, s_cores, ("",))], "q": [(_OPEN_Q, q_cores, ("",))]}
    if u_new or u_old:
        out["u"] = [(_OPEN_U, u_new, _CLOSE), (_OPEN_U, u_old, ("",))]
    return out


# family -> part -> list of (opener choices, core choices, closer choices)
GRAMMARS: dict[str, dict[str, list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]]] = {
    "favourite": {
        "s": [(_OPEN_S, _CORE_S, ("",))],
        "u": [(_OPEN_U, _CORE_U_NEW, _CLOSE_U), (_OPEN_U, _CORE_U_OLD, ("",))],
        "q": [(_OPEN_Q, _CORE_Q, ("",))],
    },
    "name": _fam(
        ("my {who}'s name is {v}.", "my {who} is called {v}.", "{v} is my {who}.", "my {who}? That's {v}.",
         "the name of my {who} is {v}.", "when I mention {v}, that's my {who}."),
        ("my {who} is {v} now", "my new {who} is {v}", "{v} is my {who} now", "I've got a new {who}, {v}",
         "my {who} has changed: it's {v} now"),
        ("{old} isn't my {who} anymore; {v} is.", "my {who} used to be {old}, but now it's {v}.",
         "{v} took {old}'s place as my {who}.", "my {who} was {old}; now it's {v}."),
        ("what's my {who}'s name?", "what is my {who} called?", "what's the name of my {who}?",
         "do you know my {who}'s name?", "what name did I give you for my {who}?", "who's my {who} these days?")),
    "home": _fam(
        ("I live in {v}.", "my home is in {v}.", "I've got a flat in {v}.", "my place is in {v}.",
         "I'm living in {v} at the moment.", "my address is in {v}."),
        ("I live in {v} now", "I've moved to {v}", "my home is in {v} now", "I've just moved house to {v}",
         "my new place is in {v}"),
        ("I moved out of {old}; I live in {v} now.", "I used to live in {old}, but now I'm in {v}.",
         "I left {old} and moved to {v}.", "my home moved from {old} to {v}."),
        ("where do I live?", "which city do I live in?", "where is my home?", "what city is my place in?",
         "where am I living now?", "do you know where I live?")),
    "hometown": _fam(
        ("I grew up in {v}.", "I'm from {v} originally.", "my hometown is {v}.", "I was born and raised in {v}.",
         "I spent my school years in {v}.", "the town I grew up in is {v}."),
        (), (),
        ("where did I grow up?", "what's my hometown?", "where am I from originally?", "which town did I grow up in?",
         "where was I raised?", "do you know my hometown?")),
    "employer": _fam(
        ("I work at {v}.", "my employer is {v}.", "I'm with {v}.", "I have a job at {v}.", "{v} is where I work.",
         "the company I work for is {v}."),
        ("I work at {v} now", "I've joined {v}", "my new employer is {v}", "{v} is my employer now",
         "I've moved to a job at {v}"),
        ("I left {old}; I work at {v} now.", "I used to work at {old}, but now I'm at {v}.",
         "I quit {old} and joined {v}.", "my employer changed from {old} to {v}."),
        ("where do I work?", "which company do I work for?", "who is my employer?", "where am I working now?",
         "what's the company I work for?", "do you know where I work?")),
    "job": _fam(
        ("I work as {a} {v}.", "I'm {a} {v}.", "my job is {v}.", "I'm {a} {v} by trade.", "my profession is {v}.",
         "I've been {a} {v} for years."),
        ("I'm {a} {v} now", "my job is {v} now", "I've become {a} {v}", "I work as {a} {v} now",
         "my new job title is {v}"),
        ("I'm not {a_old} {old} anymore; I'm {a} {v}.", "I used to be {a_old} {old}, but now I'm {a} {v}.",
         "I went from {old} to {v}.", "I gave up being {a_old} {old} and became {a} {v}."),
        ("what's my job?", "what do I do for a job?", "what's my profession?", "what is my job title now?",
         "what do I work as?", "do you know my job?")),
    "car": _fam(
        ("I drive {a} {v}.", "my car is {a} {v}.", "I own {a} {v}.", "I've got {a} {v}.", "my car's {a} {v}.",
         "the car I own is {a} {v}."),
        ("I drive {a} {v} now", "my new car is {a} {v}", "I've bought {a} {v}", "my car is {a} {v} now",
         "I've switched to {a} {v}"),
        ("I sold the {old}; I drive {a} {v} now.", "I used to drive {a_old} {old}, but now it's {a} {v}.",
         "I swapped my {old} for {a} {v}.", "my car went from {a_old} {old} to {a} {v}."),
        ("what car do I drive?", "what's my car?", "which car do I own?", "what do I drive now?",
         "what kind of car have I got?", "do you know what car I have?")),
    "date": _fam(
        ("my {what} is on {v}.", "my {what} is {v}.", "{v} is my {what}.", "we celebrate my {what} on {v}.",
         "my {what} falls on {v}.", "don't forget, my {what} is {v}."),
        (), (),
        ("when is my {what}?", "what's the date of my {what}?", "which day is my {what}?", "when do I celebrate my {what}?",
         "on which date is my {what}?", "do you know when my {what} is?")),
    "number": _fam(
        ("my {thing} is {v}.", "here's my {thing}: {v}.", "my {thing} is the number {v}.", "{v} is my {thing}.",
         "keep this: my {thing} is {v}.", "for later, my {thing} is {v}."),
        ("my {thing} is {v} now", "my new {thing} is {v}", "{v} is my {thing} now", "my {thing} has changed to {v}",
         "they gave me a new {thing}: {v}"),
        ("my {thing} isn't {old} anymore; it's {v}.", "my {thing} used to be {old}, but now it's {v}.",
         "my {thing} went from {old} to {v}.", "{old} is my old {thing}; the new one is {v}."),
        ("what's my {thing}?", "what is my {thing} now?", "do you know my {thing}?", "what number is my {thing}?",
         "what's my current {thing}?", "what did I say my {thing} is?")),
    "appointment": _fam(
        ("my {event} is on {v}.", "I have a {event} on {v}.", "my {event} is booked for {v}.",
         "I'm going to my {event} on {v}.", "my {event} is set for {v}.", "I made a {event} for {v}."),
        ("my {event} is on {v} now", "my {event} moved to {v}", "the {event} is now on {v}",
         "I've rebooked my {event} for {v}", "my {event} got rescheduled to {v}"),
        ("my {event} is no longer on {old}; it's {v}.", "my {event} was on {old}, but now it's {v}.",
         "the {event} moved from {old} to {v}.", "forget about {old}: my {event} is on {v}."),
        ("when is my {event}?", "what date is my {event}?", "when's my {event} now?", "on what date is my {event}?",
         "do you know when my {event} is?", "what day did I book my {event} for?")),
    "trip": _fam(
        ("I'm flying to {v} in {month}.", "in {month} I'm going to {v}.", "my trip in {month} is to {v}.",
         "I'm off to {v} in {month}.", "I've booked a trip to {v} for {month}.", "{month} means {v} for me."),
        ("in {month} I'm going to {v} now", "my {month} trip is to {v} now", "I'm flying to {v} in {month} now",
         "I've rebooked my {month} trip to {v}", "my {month} plans changed to {v}"),
        ("I'm not going to {old} in {month}; it's {v}.", "my {month} trip was to {old}, but now it's {v}.",
         "in {month} I'm going to {v} rather than {old}.", "my {month} plans went from {old} to {v}."),
        ("where am I going in {month}?", "where is my {month} trip to?", "where am I flying in {month}?",
         "which city am I off to in {month}?", "do you know where I'm going in {month}?",
         "what's my {month} trip?")),
    "preference": _fam(
        ("I prefer {v} {thing}.", "I like {v} {thing} best of all.", "{v} {thing} is my preference.",
         "I'd always rather have {v} {thing}.", "I tend to go for {v} {thing}.", "for {thing}, it's {v} for me."),
        ("I prefer {v} {thing} now", "I've switched to {v} {thing}", "my preference is {v} {thing} now",
         "I'd rather have {v} {thing} now", "I've changed to {v} {thing}"),
        ("I don't prefer {old} {thing} anymore; it's {v}.", "I used to prefer {old} {thing}, but now it's {v}.",
         "I went from {old} {thing} to {v} {thing}.", "{old} {thing} is out; {v} {thing} is in."),
        ("what kind of {thing} do I prefer?", "which {thing} do I prefer?", "what's my preferred {thing}?",
         "what {thing} would I rather have?", "do you know which {thing} I prefer?", "which {thing} do I go for?")),
}

# how many of a part's expansions to keep (seeded sample; the rest are never used)
_KEEP = {"s": 60, "u": 240, "q": 60}


def _join(opener: str, core: str, closer: str) -> str:
    text = opener + core + closer
    return text[:1].upper() + text[1:]


def expand(rules) -> list[str]:
    """Every opener × core × closer combination of ``rules`` (duplicates dropped, order kept)."""
    out: dict[str, None] = {}
    for openers, cores, closers in rules:
        for core in cores:
            for opener in openers:
                for closer in closers:
                    out[_join(opener, core, closer)] = None
    return list(out)


@lru_cache(maxsize=None)
def _banned_re(family: str) -> re.Pattern | None:
    words = BANNED.get(family, ())
    return re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in words)) if words else None


def banned(family: str, text: str) -> bool:
    """True if ``text`` uses a phrase of ``family``'s held-out templates (``BANNED``), as whole words, any case."""
    pattern = _banned_re(family)
    return bool(pattern and pattern.search(text.lower()))


def generated(family: str, part: str) -> list[str]:
    """The kept generated templates of ``family``/``part`` (empty where no grammar exists); deterministic."""
    rules = GRAMMARS.get(family, {}).get(part)
    if not rules:
        return []
    pool = [t for t in expand(rules) if not banned(family, t)]
    keep = min(_KEEP[part], len(pool))
    return random.Random(f"paraphrase:{family}:{part}").sample(pool, keep)
