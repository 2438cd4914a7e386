"""Generated *training* paraphrases: a small grammar per family expanded into many sentence templates.

Why: an adapter trained on three update sentences answers the newer value for those three and the older
one for any other wording (docs/results.md §12d). Hand-writing tens of wordings per family does not scale,
so each grammar here combines an opener, a core clause and (for updates) a closer into every wording, then
keeps a seeded sample. Slots are those of :mod:`.templates` (``{v}``, ``{old}``, ``{thing}``, ...).

Every generated template is a **train** template. The held-out lists in :mod:`.templates` stay as they
were, and the grammar avoids their vocabulary (``BANNED``), so the held-out probe still measures wordings
the adapter never saw (checked in tests/datasets/test_paraphrase.py).
"""

from __future__ import annotations

import random
import re

__all__ = ["GRAMMARS", "BANNED", "expand", "generated"]

# Words and phrases of the held-out favourite-family templates (statements, updates, questions) that no
# generated training template may use.
BANNED = ("number one", "top", "replaced", "lately", "scratch", "hands down", "like best", "pick", "above all",
          "quiz", "will always be")

_OPEN_S = ("", "By the way, ", "Fun fact: ", "Oh, ", "Just so you know, ", "In case it comes up, ", "Random thing: ",
           "For what it's worth, ", "Honestly, ", "Okay, so ")
_CORE_S = ("my favourite {thing} is {v}.", "{v} is my favourite {thing}.", "I love {v} more than any other {thing}.",
           "the {thing} I love most is {v}.", "I'm a huge fan of {v}; it's my favourite {thing}.",
           "my all-time favourite {thing} is {v}.", "no {thing} makes me happier than {v}.",
           "if I had to choose one {thing}, it would be {v}.", "{v} is the {thing} I enjoy most.",
           "my favourite {thing}? {v}, easily.")

_OPEN_U = ("", "Actually, ", "Update: ", "Heads up: ", "Quick correction: ", "Just so you know, ", "Oh, by the way, ",
           "Small change: ", "FYI, ", "News: ", "Correction: ", "So, ", "Well, ", "Okay, new info: ", "Funny thing, ",
           "Something changed: ")
_CORE_U_NEW = ("my favourite {thing} is {v} now", "my new favourite {thing} is {v}", "{v} is my new favourite {thing}",
               "{v} is my favourite {thing} now", "I've switched my favourite {thing} to {v}",
               "my favourite {thing} has changed to {v}", "these days the {thing} I love most is {v}",
               "I've fallen for {v}, so that's my favourite {thing} now", "I now love {v} more than any other {thing}",
               "from now on my favourite {thing} is {v}", "my favourite {thing} is now {v}",
               "I've changed my favourite {thing}: it's {v} now")
_CLOSE_U = (".", ", not {old}.", " instead of {old}.", " — no more {old}.", ". I'm done with {old}.",
            ". {old} was my old one.")
_CORE_U_OLD = ("my favourite {thing} is no longer {old}; it's {v}.", "I went off {old}; my favourite {thing} is {v} now.",
               "{v} beat {old} — it's my favourite {thing} now.",
               "{old} used to be my favourite {thing}, but now it's {v}.",
               "I don't love {old} anymore; {v} is my favourite {thing}.",
               "my favourite {thing} was {old}, and now it's {v}.", "I switched from {old} to {v} as my favourite {thing}.",
               "{old} is out, {v} is in: that's my favourite {thing} now.",
               "I've stopped loving {old}. My favourite {thing} is {v} now.",
               "my favourite {thing} went from {old} to {v}.")

_OPEN_Q = ("", "Quick question: ", "Hey, ", "Remind me, ", "So, ", "Tell me, ", "Let's see if you remember: ",
           "Hmm, ", "One more thing: ", "Okay, ")
_CORE_Q = ("what's my favourite {thing}?", "which {thing} do I love most?", "what is my favourite {thing} now?",
           "what's my current favourite {thing}?", "which {thing} is my favourite these days?",
           "what {thing} do I enjoy the most?", "do you know my favourite {thing}?",
           "what did I say my favourite {thing} is?", "which {thing} do I love most at the moment?",
           "what's the {thing} I love most?")

# family -> part -> list of (opener choices, core choices, closer choices)
GRAMMARS: dict[str, dict[str, list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]]] = {
    "favourite": {
        "s": [(_OPEN_S, _CORE_S, ("",))],
        "u": [(_OPEN_U, _CORE_U_NEW, _CLOSE_U), (_OPEN_U, _CORE_U_OLD, ("",))],
        "q": [(_OPEN_Q, _CORE_Q, ("",))],
    },
}

# how many of a part's expansions to keep (seeded sample; the rest are never used)
_KEEP = {"s": 40, "u": 120, "q": 40}


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


def _banned(text: str) -> bool:
    low = text.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", low) for w in BANNED)


def generated(family: str, part: str) -> list[str]:
    """The kept generated templates of ``family``/``part`` (empty where no grammar exists); deterministic."""
    rules = GRAMMARS.get(family, {}).get(part)
    if not rules:
        return []
    pool = [t for t in expand(rules) if not _banned(t)]
    keep = min(_KEEP[part], len(pool))
    return random.Random(f"paraphrase:{family}:{part}").sample(pool, keep)
