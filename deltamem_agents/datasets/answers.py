"""Does a reply contain the gold answer? Lower-cased, punctuation-free, whole-word containment.

    contains_answer("It's Teal!", ["teal"])  -> True;  contains_answer("tealish", ["teal"]) -> False
"""

from __future__ import annotations

import re
import string
from typing import Iterable

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def contains_answer(prediction: str, aliases: Iterable[str]) -> bool:
    pred = f" {normalize(prediction)} "
    return any(f" {normalize(a)} " in pred for a in aliases if normalize(a))
