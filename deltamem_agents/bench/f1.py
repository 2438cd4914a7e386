"""The official LoCoMo QA metric (snap-research/LoCoMo task_eval/evaluation.py), re-implemented exactly.

- normalise: drop commas, lowercase, remove punctuation, remove the words a/an/the/and, squeeze spaces;
- token F1 over Porter-stemmed tokens (nltk `PorterStemmer`, as the official scorer);
- category 1 (multi-hop): prediction and gold are split on commas; for each gold part the best F1 over the
  prediction parts, averaged over gold parts;
- category 3 (open-domain): the gold is cut at its first ';';
- categories 2 and 4: plain token F1;
- category 5 (adversarial): correct iff the (option-mapped) answer contains "no information available"
  or "not mentioned".
`postprocess` is the official cleaning of a generated answer (first line; for category 5 the chosen option).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = set(string.punctuation)


@lru_cache(maxsize=1)
def _stemmer():
    try:
        from nltk.stem import PorterStemmer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the LoCoMo F1 needs nltk: pip install 'deltamem-agents[bench]'") from exc
    return PorterStemmer()


def normalize_answer(s: str) -> str:
    s = str(s).replace(",", "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def f1_score(prediction: str, gold: str) -> float:
    """Stemmed token F1 of one prediction against one gold string."""
    ps = _stemmer()
    pred = [ps.stem(w) for w in normalize_answer(prediction).split()]
    ref = [ps.stem(w) for w in normalize_answer(gold).split()]
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def multi_f1(prediction: str, gold: str) -> float:
    """Category 1: mean over comma-separated gold parts of the best F1 against any prediction part."""
    preds = [p.strip() for p in str(prediction).split(",")]
    golds = [g.strip() for g in str(gold).split(",")]
    return sum(max(f1_score(p, g) for p in preds) for g in golds) / len(golds)


def is_abstention(answer: str) -> bool:
    low = answer.lower()
    return "no information available" in low or "not mentioned" in low


def locomo_score(prediction: str, gold: str, category: int) -> float:
    """The official per-question score (F1 for categories 1-4, 0/1 for category 5)."""
    gold = str(gold)
    if category == 5:
        return float(is_abstention(prediction))
    if category == 3:
        gold = gold.split(";")[0].strip()
    if category == 1:
        return float(multi_f1(prediction, gold))
    if category in (2, 3, 4):
        return f1_score(prediction, gold)
    raise ValueError(f"unknown LoCoMo category {category!r}")


def postprocess(raw: str, options: dict[str, str] | None = None) -> str:
    """Official answer cleaning: first line; with options (category 5) '(a)' in it picks a, otherwise b."""
    text = raw.replace('\\"', "'").strip()
    text = text.split("\n")[0].strip() if text else ""
    if options:
        return options["a"] if "(a)" in text.lower() else options["b"]
    text = text.lower()
    for junk in ("(a)", "(b)", "a)", "b)", "answer:"):
        text = text.replace(junk, "")
    return text.strip()
