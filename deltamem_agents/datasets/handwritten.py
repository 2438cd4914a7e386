"""Hand-written open-set probes: 48 facts phrased unlike every generator template, 16 each of a person's own facts,
a work task and a tool's output (data/handwritten_probes.jsonl). Each value sits verbatim in its statement.

    facts = handwritten_facts()        # [Fact(relation='p01', kind='person', value='Ingrid Halvorsen', ...), ...]
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from .openset import Fact

__all__ = ["handwritten_facts"]


@lru_cache(maxsize=1)
def handwritten_facts() -> tuple[Fact, ...]:
    text = resources.files(__package__).joinpath("data/handwritten_probes.jsonl").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        p = json.loads(line)
        if p["value"] not in p["statement"]:
            raise ValueError(f"probe {p['id']}: its value {p['value']!r} is not in its statement")
        out.append(Fact(p["id"], p["group"], p["value"], p["statement"], p["question"], p["role"]))
    return tuple(out)
